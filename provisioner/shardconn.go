package provisioner

import (
	"context"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// ShardAdmin is a small pool of admin connections to one shard's
// maintenance database, for roles, databases, replication slots and
// pg_catalog reads: it never touches a tenant's objects (see
// shardmap.Dialer). It is safe for concurrent use; the provisioner closes
// it when it stops.
type ShardAdmin struct {
	dsn  string
	pool *pgxpool.Pool

	probe     sync.Mutex
	probed    bool
	superuser bool // whether the admin role is a superuser
	major     int  // the server's major version
}

// Pool is the shard's admin pool: never for a query on a tenant's
// tables, views or functions.
func (s *ShardAdmin) Pool() *pgxpool.Pool { return s.pool }

// Major is the shard's PostgreSQL major version, such as 15 or 17.
func (s *ShardAdmin) Major() int { return s.major }

// ShardAdmin returns the admin pool of a shard, opened on first use and
// checked then (EUNAVAILABLE when the shard does not answer, ENOTFOUND for
// an unknown shard).
func (p *Provisioner) ShardAdmin(ctx context.Context, name string) (*ShardAdmin, error) {
	return p.shard(ctx, name)
}

// shard returns the admin pool of a shard, opening it on first use and
// reopening it when the shard's DSN changed. The first use checks that the
// shard answers; no network call happens under the map's lock, so a hung
// shard never delays the others.
func (p *Provisioner) shard(ctx context.Context, name string) (*ShardAdmin, error) {
	cfg, err := p.dialer.AdminConfig(ctx, name, "")
	if err != nil {
		return nil, err
	}
	sc, err := p.shardPool(ctx, name, cfg)
	if err != nil {
		return nil, err
	}
	sc.probe.Lock()
	defer sc.probe.Unlock()
	if !sc.probed {
		if err := sc.pool.QueryRow(ctx, `
			SELECT rolsuper, current_setting('server_version_num')::int / 10000
			FROM pg_catalog.pg_roles WHERE rolname = current_user`).Scan(&sc.superuser, &sc.major); err != nil {
			return nil, shardmap.ShardError(err, name)
		}
		sc.probed = true
	}
	return sc, nil
}

func (p *Provisioner) shardPool(ctx context.Context, name string, cfg *pgx.ConnConfig) (*ShardAdmin, error) {
	dsn := cfg.ConnString()
	p.shards.Lock()
	defer p.shards.Unlock()
	if sc, ok := p.admins[name]; ok && sc.dsn == dsn {
		return sc, nil
	} else if ok {
		go sc.pool.Close() // Close waits for borrowed connections
		delete(p.admins, name)
	}
	pool, err := shardmap.PoolOf(ctx, cfg, 4)
	if err != nil {
		return nil, silo.Errorf(silo.EINTERNAL, "shard %q has an invalid DSN", name)
	}
	sc := &ShardAdmin{dsn: dsn, pool: pool}
	p.admins[name] = sc
	return sc, nil
}

// adminDB opens an admin session on database db of a shard, with the safe
// search_path. It is for DDL and pg_catalog reads only: never for a query
// on a tenant's tables, views or functions. The caller closes it.
func (p *Provisioner) adminDB(ctx context.Context, shard, db string) (*pgx.Conn, error) {
	return p.dialer.ConnectAdmin(ctx, shard, db)
}

// asTenant opens a session of the tenant's own login role on its database
// on shard ("" for the tenant's shard). The caller closes it.
func (p *Provisioner) asTenant(ctx context.Context, t *silo.Tenant, shard string) (*pgx.Conn, error) {
	return p.dialer.ConnectTenant(ctx, t, shard)
}

// ident quotes a name that was validated against the tenant-id grammar (or
// made by Silo) for use in DDL.
func ident(name string) string { return pgx.Identifier{name}.Sanitize() }
