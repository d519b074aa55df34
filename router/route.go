package router

import (
	"context"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// Route is where a tenant's data lives and how to reach it. Epoch is the
// tenant row's epoch when the route was read: a route with an older epoch
// than the catalog's is stale.
type Route struct {
	TenantID string
	Shard    string
	Database string // also the name of the tenant's role
	State    silo.TenantState
	Epoch    int64

	// connConfig connects as the tenant's own role to its database; its
	// password is opened from the catalog and kept only in memory.
	connConfig *pgx.ConnConfig
}

// resolver maps tenants to routes, from the catalog, through a bounded LRU
// cache. Every change to a tenant row is notified (see listen.go) and drops
// the tenant's entry. Unknown tenants are never cached, so a tenant created
// a moment ago is found at once. A cached route holds all a tenant's
// connections need, its password included, so it serves while the catalog
// is down; an uncached one is refused then, at once.
type resolver struct {
	dialer *shardmap.Dialer
	store  *shardmap.Store
	health *shardmap.CatalogHealth
	cache  *lru.Cache[string, *Route]
	// gen grows on every invalidation. A lookup that started before one
	// does not cache its result, which may predate the change.
	gen     atomic.Uint64
	metrics *metrics
	limits  connLimits // installed on every tenant connection
}

func newResolver(dialer *shardmap.Dialer, store *shardmap.Store, health *shardmap.CatalogHealth, size int, m *metrics) (*resolver, error) {
	cache, err := lru.New[string, *Route](size)
	if err != nil {
		return nil, err
	}
	return &resolver{dialer: dialer, store: store, health: health, cache: cache, metrics: m}, nil
}

// resolve returns the tenant's route, cached or read from the catalog. It
// returns ENOTFOUND for unknown tenants, EUNAVAILABLE at once for an
// uncached one while the catalog is down, and catalog errors as they are.
func (r *resolver) resolve(ctx context.Context, id string) (*Route, error) {
	if rt, ok := r.cache.Get(id); ok {
		r.metrics.routeHits.Inc()
		if !r.health.Up() {
			r.metrics.outageHits.Inc()
		}
		return rt, nil
	}
	r.metrics.routeMisses.Inc()
	gctx, cancel, err := r.health.Guard(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	rt, err := r.read(gctx, id)
	if cause := shardmap.GuardCause(gctx); err != nil && cause != nil && ctx.Err() == nil {
		return nil, cause // the catalog went down during the read
	}
	return rt, err
}

// read reads a tenant's route from the catalog and caches it.
func (r *resolver) read(ctx context.Context, id string) (*Route, error) {
	gen := r.gen.Load()
	t, err := r.store.GetTenant(ctx, id)
	if err != nil {
		return nil, err
	}
	rt := &Route{TenantID: t.ID, Shard: t.Shard, Database: t.Database, State: t.State, Epoch: t.Epoch}
	if t.State == silo.TenantActive {
		if rt.connConfig, err = r.connConfig(ctx, t); err != nil {
			return nil, err
		}
	}
	if r.gen.Load() == gen {
		r.cache.Add(id, rt)
	}
	return rt, nil
}

// connConfig builds the connection settings of a tenant: the shard's host
// and port, the tenant's role, password and database.
func (r *resolver) connConfig(ctx context.Context, t *silo.Tenant) (*pgx.ConnConfig, error) {
	cfg, err := r.dialer.TenantConfig(ctx, t, "")
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = "silo-router"
	r.limits.install(cfg)
	return cfg, nil
}

// invalidate drops a tenant's route; "" drops every route (after the
// notification stream was interrupted and changes may have been missed).
func (r *resolver) invalidate(id string) {
	r.gen.Add(1)
	if id == "" {
		r.cache.Purge()
		return
	}
	r.cache.Remove(id)
}
