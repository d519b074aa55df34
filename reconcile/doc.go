// Package reconcile compares the catalog with every shard: `silo check`
// and GET /v1/check.
//
// A Checker reads what the catalog says should be on the shards (tenants,
// operations in progress, warm units, retired copies), then what each
// shard holds of Silo's naming (databases and roles t_… and silo_…, the
// replication slots, publications and subscriptions of moves), and reports
// each disagreement as a Finding: what Silo made and nothing names
// (orphans), tenants whose database or role is missing or at another schema
// version than the catalog says, retired copies past their time,
// materialized views that were never populated, shards it could not read.
// What an operation in progress names is in flight, never a finding.
//
// Repair fixes what is safe to fix: it drops orphans that nothing in the
// catalog names (it asks again right before each drop) and retired copies
// past their time, and reports everything else. It never drops a database
// that a tenant, an operation, a warm unit or a retired copy names.
//
// Shards are read as their admin, through pg_catalog only; a tenant's
// schema version is read as the tenant's own role (see docs/security.md).
package reconcile
