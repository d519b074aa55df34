package reconcile

import (
	"context"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/shardmap"
)

// shardScan is what one shard holds of Silo's, as its admin sees it.
type shardScan struct {
	name string
	err  error // the shard could not be read

	databases map[string]database // of Silo's naming
	roles     map[string]bool     // of Silo's naming: whether it may log in
	slots     []slot              // silo_move_…
	subs      []subscription      // silo_move_…
	tenants   map[string]*tenantScan
}

type database struct {
	sessions int
	size     int64 // read for the databases the catalog did not name (-1 unknown)
}

type slot struct {
	name, database string
	active         bool
}

type subscription struct{ name, database string }

// tenantScan is what a tenant's database holds that a check reports.
type tenantScan struct {
	publications []string // Silo's move publication, when it is there
	matviews     []string // unpopulated, as schema.name
	version      int64
	versionRead  bool
	err          error
}

// scanShard reads what the shard holds of Silo's, and each tenant database
// that the catalog (before) places there and no operation is changing.
func (c *Checker) scanShard(ctx context.Context, sh silo.Shard, before *shardmap.Owners) *shardScan {
	s := &shardScan{name: sh.Name, databases: map[string]database{}, roles: map[string]bool{}, tenants: map[string]*tenantScan{}}
	// The shard's admin settings once, for the session in each database.
	admin, err := c.cfg.Dialer.AdminConfig(ctx, sh.Name, "")
	if err != nil {
		s.err = err
		return s
	}
	if s.err = c.listShardObjects(ctx, s, admin, before); s.err != nil {
		return s
	}
	inFlight := runningTenants(before)
	var wg sync.WaitGroup
	sem := make(chan struct{}, c.cfg.Concurrency)
	var mu sync.Mutex
	for _, t := range before.Tenants {
		if t.Shard != sh.Name || inFlight[t.ID] {
			continue
		}
		if _, ok := s.databases[t.Database]; !ok {
			continue // missing: nothing to read
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return s
		}
		wg.Go(func() {
			defer func() { <-sem }()
			ts := c.scanTenant(ctx, admin, &t, s.roles[t.Database], before.Migrating[t.ID])
			mu.Lock()
			s.tenants[t.ID] = ts
			mu.Unlock()
		})
	}
	wg.Wait()
	return s
}

// listShardObjects reads the shard's databases, roles, replication slots
// and subscriptions of Silo's naming, from pg_catalog, as its admin.
func (c *Checker) listShardObjects(ctx context.Context, s *shardScan, admin *pgx.ConnConfig, before *shardmap.Owners) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.QueryTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, admin)
	if err != nil {
		return shardmap.ShardError(err, s.name)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `
		SELECT d.datname, (SELECT count(*) FROM pg_catalog.pg_stat_activity a WHERE a.datid = d.oid)::int
		FROM pg_catalog.pg_database d
		WHERE pg_catalog.starts_with(d.datname, 't_') OR pg_catalog.starts_with(d.datname, 'silo_')`)
	if err != nil {
		return shardmap.ShardError(err, s.name)
	}
	var unnamed []string
	named := namesOn(s.name, before)
	err = forEachRow(rows, func(r pgx.CollectableRow) error {
		var name string
		var db database
		if err := r.Scan(&name, &db.sessions); err != nil {
			return err
		}
		if cls, _ := classify(name); cls != notSilo {
			db.size = -1
			s.databases[name] = db
			if !named[name] {
				unnamed = append(unnamed, name)
			}
		}
		return nil
	})
	if err != nil {
		return shardmap.ShardError(err, s.name)
	}
	if len(unnamed) > 0 {
		// Sizes only for what may be reported: pg_database_size walks the
		// database's files. One dropped meanwhile has none to report.
		rows, err := conn.Query(ctx, `
			SELECT d.datname, pg_catalog.pg_database_size(d.oid) FROM pg_catalog.pg_database d WHERE d.datname = ANY ($1)`, unnamed)
		if err != nil {
			return shardmap.ShardError(err, s.name)
		}
		if err := forEachRow(rows, func(r pgx.CollectableRow) error {
			var name string
			var size int64
			if err := r.Scan(&name, &size); err != nil {
				return err
			}
			db := s.databases[name]
			db.size = size
			s.databases[name] = db
			return nil
		}); err != nil && shardmap.SQLState(err) != "3D000" {
			return shardmap.ShardError(err, s.name)
		}
	}
	rows, err = conn.Query(ctx, `
		SELECT rolname, rolcanlogin FROM pg_catalog.pg_roles
		WHERE pg_catalog.starts_with(rolname, 't_') OR pg_catalog.starts_with(rolname, 'silo_')`)
	if err != nil {
		return shardmap.ShardError(err, s.name)
	}
	if err := forEachRow(rows, func(r pgx.CollectableRow) error {
		var name string
		var login bool
		if err := r.Scan(&name, &login); err != nil {
			return err
		}
		if cls, _ := classify(name); cls != notSilo {
			s.roles[name] = login
		}
		return nil
	}); err != nil {
		return shardmap.ShardError(err, s.name)
	}
	rows, err = conn.Query(ctx, `
		SELECT slot_name::text, coalesce(database::text, ''), active FROM pg_catalog.pg_replication_slots
		WHERE pg_catalog.starts_with(slot_name::text, $1)`, movePrefix)
	if err != nil {
		return shardmap.ShardError(err, s.name)
	}
	if s.slots, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (slot, error) {
		var sl slot
		return sl, r.Scan(&sl.name, &sl.database, &sl.active)
	}); err != nil {
		return shardmap.ShardError(err, s.name)
	}
	// pg_subscription is shared by the server's databases.
	rows, err = conn.Query(ctx, `
		SELECT s.subname::text, d.datname::text FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_database d ON d.oid = s.subdbid
		WHERE pg_catalog.starts_with(s.subname::text, $1)`, movePrefix)
	if err != nil {
		return shardmap.ShardError(err, s.name)
	}
	if s.subs, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (subscription, error) {
		var sub subscription
		return sub, r.Scan(&sub.name, &sub.database)
	}); err != nil {
		return shardmap.ShardError(err, s.name)
	}
	return nil
}

// scanTenant reads a tenant's database: as the shard's admin, only
// pg_catalog (Silo's publication, unpopulated materialized views); as the
// tenant's own role, its schema version, when it is active (its role may
// log in) and no migration is running on it.
func (c *Checker) scanTenant(ctx context.Context, admin *pgx.ConnConfig, t *silo.Tenant, canLogin, migrating bool) *tenantScan {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.QueryTimeout)
	defer cancel()
	ts := &tenantScan{}
	if ts.err = c.catalogAsAdmin(ctx, admin, t.Shard, t.Database, ts); ts.err != nil {
		return ts
	}
	if t.State == silo.TenantActive && canLogin && !migrating {
		ts.version, ts.err = c.versionAsTenant(ctx, t)
		ts.versionRead = ts.err == nil
	}
	return ts
}

// catalogAsAdmin reads pg_catalog in database db as the shard's admin
// (admin: the Dialer's AdminConfig of the shard): the session pins
// search_path and runs nothing of the tenant's, and these reads call only
// built-ins.
func (c *Checker) catalogAsAdmin(ctx context.Context, admin *pgx.ConnConfig, shard, db string, ts *tenantScan) error {
	cfg := admin.Copy()
	cfg.Database = db
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return shardmap.ShardError(err, shard)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// Silo's publication belongs to the admin; a tenant may make one of
	// the same name in its own database, which is the tenant's business.
	rows, err := conn.Query(ctx, `
		SELECT p.pubname::text FROM pg_catalog.pg_publication p JOIN pg_catalog.pg_roles r ON r.oid = p.pubowner
		WHERE p.pubname = $1 AND (r.rolsuper OR r.rolname = current_user)`, movePub)
	if err != nil {
		return shardmap.ShardError(err, shard)
	}
	if ts.publications, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return shardmap.ShardError(err, shard)
	}
	rows, err = conn.Query(ctx, `
		SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'm' AND NOT c.relispopulated ORDER BY 1`)
	if err != nil {
		return shardmap.ShardError(err, shard)
	}
	ts.matviews, err = pgx.CollectRows(rows, pgx.RowTo[string])
	return shardmap.ShardError(err, shard)
}

// versionAsTenant reads the tenant's schema version as its own login role:
// the version table is the tenant's, and so is anything it put there.
func (c *Checker) versionAsTenant(ctx context.Context, t *silo.Tenant) (int64, error) {
	conn, err := c.cfg.Dialer.ConnectTenant(ctx, t, "")
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	v, err := migrations.TenantVersion(ctx, conn)
	return v, shardmap.ShardError(err, t.Shard)
}

// forEachRow calls fn on each row and closes rows.
func forEachRow(rows pgx.Rows, fn func(pgx.CollectableRow) error) error {
	_, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (struct{}, error) { return struct{}{}, fn(r) })
	return err
}
