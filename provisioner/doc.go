// Package provisioner manages each tenant's life: it creates the tenant's own
// database and login role on a shard, migrated to the current tenant schema,
// and suspends, resumes, deletes, purges and exports it.
//
// Every lifecycle change is an operation recorded in the catalog and made of
// idempotent steps. The server that accepts a request runs the operation at
// once, holding a PostgreSQL advisory lock on the tenant; the same
// transaction that records the operation also enqueues a River job, scheduled
// a little later, that resumes the operation on any server if the first one
// dies. A create that fails is rolled back (database, role and catalog row);
// a rollback that cannot finish (a shard down) stays running, and River
// retries it until it does, so the catalog always knows every database and
// role that Silo made.
//
// New databases are cloned from a template database kept on each shard at
// the latest tenant schema; a warm pool of ready clones per shard makes a
// create a rename. Template and pool upkeep runs as River jobs, so any
// number of servers share it.
//
// Inside a tenant database, every object belongs to the tenant's role: the
// template's objects are made by the NOLOGIN role silo_owner and handed over
// with REASSIGN OWNED when a clone becomes a tenant's. CONNECT is revoked
// from PUBLIC, so no other tenant's role can connect.
//
// Moves are package rebalancer's operations; what they need of a tenant's
// life (its role and database on another shard, its logins, its schema's
// dump, its old database's retirement) is exported here (move.go).
package provisioner
