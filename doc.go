// Package silo is the domain of Silo, a database-per-tenant control plane for
// PostgreSQL: tenants, the shards that hold their databases, their states,
// audit entries and the error codes every other package speaks.
//
// The root package imports nothing of the project. Capabilities live in their
// own packages: shardmap (the tenant directory and shard registry), provisioner
// (tenant lifecycle), router (connections to the right shard), migrations
// (embedded SQL), api (HTTP) and cmd/silo (wiring).
package silo
