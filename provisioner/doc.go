// Package provisioner manages each tenant's life: it creates the tenant's own
// database and login role on a shard, migrates it, and suspends, resumes,
// deletes, purges and exports it, as durable operations in the catalog.
//
// It is built by the tenant provisioning issue; until then it holds no code.
package provisioner
