// Package router sends work to the tenant's own database on the right shard,
// as the tenant's own role, within a fixed connection budget per shard
// however many tenants there are.
//
// Routes (tenant to shard and database) come from the catalog through a
// bounded LRU cache. A trigger on the tenants table notifies every change,
// and each Router listens and drops the routes and pools of the tenants
// named, so every server sees a tenant's new state within moments. Unknown
// tenants are never cached.
//
// PostgreSQL binds a connection to one database and role, so each tenant
// needs connections of its own. All tenant pools on a shard share the
// shard's budget: past it, the least recently used idle connection of
// another tenant is closed to make room, and when none is idle the caller
// waits, up to a deadline, for one to come back. A per-tenant cap keeps one
// hot tenant from taking the whole budget. Tenant pools live in an LRU; an
// evicted or invalidated pool closes its idle connections off the request
// path, and the rest as they come back.
//
// A prober checks each shard in use; a shard that hangs or goes down opens
// its breaker within the detection time (5 s by default, see
// Config.ProbeInterval), which refuses its tenants' requests at once and
// cuts off those in flight. While the catalog is down, tenants whose routes
// are cached are served as usual and the others are refused at once (see
// Config.CatalogHealth).
//
// Use WithTenant or WithTenantTx:
//
//	err := r.WithTenantTx(ctx, "acme", func(tx pgx.Tx) error {
//		_, err := tx.Exec(ctx, "INSERT INTO notes (title) VALUES ($1)", "hello")
//		return err
//	})
package router
