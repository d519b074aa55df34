package provisioner

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/shardmap"
)

// Names Silo keeps on every shard.
const (
	templateDB = "silo_template"
	ownerRole  = "silo_owner" // owns the template's objects until a tenant takes them
	warmPrefix = "silo_warm_"
)

// ensureTemplate makes sure the shard's template database exists and is at
// tenant schema version, and returns that version. It is idempotent and
// safe across servers: they take turns under an advisory lock on the shard.
func (p *Provisioner) ensureTemplate(ctx context.Context, shard string, version int64) (int64, error) {
	sc, err := p.shard(ctx, shard)
	if err != nil {
		return 0, err
	}
	// One server at a time sets up a shard's template: concurrent DDL on
	// the same catalog rows fails ("tuple concurrently updated").
	conn, err := sc.pool.Acquire(ctx)
	if err != nil {
		return 0, shardmap.ShardError(err, shard)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1, hashtext('silo_template'))`, lockClass); err != nil {
		return 0, shardmap.ShardError(err, shard)
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1, hashtext('silo_template'))`, lockClass)
	}()

	var hasRole, exists bool
	if err := conn.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
		       EXISTS (SELECT 1 FROM pg_database WHERE datname = $2)`, ownerRole, templateDB).Scan(&hasRole, &exists); err != nil {
		return 0, shardmap.ShardError(err, shard)
	}
	p.tmpl.mu.Lock()
	setUp := p.tmpl.setUp[shard]
	p.tmpl.mu.Unlock()
	if !setUp || !hasRole || !exists {
		// Once per server and shard: grants on the template are catalog
		// updates, and concurrent DDL elsewhere on the shard can make them
		// fail ("tuple concurrently updated").
		if err := p.setUpTemplate(ctx, conn.Conn(), sc, shard, hasRole, exists); err != nil {
			return 0, err
		}
		p.tmpl.mu.Lock()
		p.tmpl.setUp[shard] = true
		p.tmpl.mu.Unlock()
	}
	return p.migrateTemplate(ctx, sc, shard, version)
}

// setUpTemplate makes silo_owner and the template database as needed, and
// sets their grants and the owner of its schema.
func (p *Provisioner) setUpTemplate(ctx context.Context, conn *pgx.Conn, sc *ShardAdmin, shard string, hasRole, exists bool) error {
	var stmts []string
	if !hasRole {
		stmts = append(stmts, "CREATE ROLE "+ident(ownerRole)+" NOLOGIN")
	}
	if !sc.superuser {
		// A CREATEROLE admin needs membership to act as silo_owner.
		stmts = append(stmts, "GRANT "+ident(ownerRole)+" TO CURRENT_USER")
	}
	if !exists {
		stmts = append(stmts, "CREATE DATABASE "+ident(templateDB))
	}
	stmts = append(stmts,
		"REVOKE ALL ON DATABASE "+ident(templateDB)+" FROM PUBLIC", // nobody but Silo connects
		"GRANT CREATE ON DATABASE "+ident(templateDB)+" TO "+ident(ownerRole))
	for _, stmt := range stmts {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return shardmap.ShardError(err, shard)
		}
	}
	if !exists {
		p.log.Info("template database created", "shard", shard)
	}
	tconn, err := p.adminDB(ctx, shard, templateDB)
	if err != nil {
		return err
	}
	defer tconn.Close(context.WithoutCancel(ctx))
	// silo_owner makes every object, starting with owning the schema.
	if _, err := tconn.Exec(ctx, "ALTER SCHEMA public OWNER TO "+ident(ownerRole)); err != nil {
		return shardmap.ShardError(err, shard)
	}
	return nil
}

// migrateTemplate migrates the template to version as silo_owner, so that
// every object it makes can be handed to a tenant.
func (p *Provisioner) migrateTemplate(ctx context.Context, sc *ShardAdmin, shard string, version int64) (int64, error) {
	mctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	return p.migrateSiloDB(mctx, shard, templateDB, ownerRole, version)
}

// migrateSiloDB migrates database db on the shard to version as role,
// which SET ROLE makes the owner of what the migrations make, and returns
// the version reached. It is only for Silo's own databases, the template
// and warm units, whose objects come from the operator's migrations and
// which no tenant has ever reached: SET ROLE is no boundary, so a database
// a tenant has had is migrated as the tenant's login (migrateTenant). Its
// connections are closed when it returns: clones of the template fail
// while anyone is connected to it.
func (p *Provisioner) migrateSiloDB(ctx context.Context, shard, db, role string, version int64) (int64, error) {
	cfg, err := p.dialer.AdminConfig(ctx, shard, db)
	if err != nil {
		return 0, err
	}
	delete(cfg.RuntimeParams, "search_path") // the migrations create in public
	cfg.AfterConnect = func(ctx context.Context, conn *pgconn.PgConn) error {
		return conn.Exec(ctx, "SET ROLE "+ident(role)).Close()
	}
	pool, err := shardmap.PoolOf(ctx, cfg, 2)
	if err != nil {
		return 0, shardmap.ShardError(err, shard)
	}
	defer pool.Close()
	return p.migrate(ctx, pool, shard, db, version)
}

// migrateTenant migrates tenant t's database on shard ("" for its own) to
// version as the tenant's own login role, so that what the migrations make
// belongs to it and nothing in the tenant's database (a trigger on the
// version table, a view in its place) runs with more rights than the
// tenant's.
func (p *Provisioner) migrateTenant(ctx context.Context, t *silo.Tenant, shard string, version int64) (int64, error) {
	pool, err := p.dialer.TenantPool(ctx, t, shard, 2)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	return p.migrate(ctx, pool, cmp.Or(shard, t.Shard), t.Database, version)
}

func (p *Provisioner) migrate(ctx context.Context, pool *pgxpool.Pool, shard, db string, version int64) (int64, error) {
	_, v, err := migrations.MigrateTenantTo(ctx, pool, p.cfg.TenantMigrations, version)
	if err != nil {
		if shardmap.SQLState(err) != "" {
			return 0, silo.WrapError(err, silo.EINTERNAL, "migrate database %s on shard %q: %v", db, shard, err)
		}
		return 0, shardmap.ShardError(fmt.Errorf("migrate database %s: %w", db, err), shard)
	}
	return v, nil
}
