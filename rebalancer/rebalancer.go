package rebalancer

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/shardmap"
)

// Provisioner is what a move needs of the tenant lifecycle;
// *provisioner.Provisioner implements it (provisioner/move.go).
type Provisioner interface {
	// ShardAdmin returns a shard's admin pool and its major version.
	ShardAdmin(ctx context.Context, shard string) (*provisioner.ShardAdmin, error)
	// EnsureEmptyDatabase makes the tenant's role and an empty database
	// owned by it on shard.
	EnsureEmptyDatabase(ctx context.Context, t *silo.Tenant, shard string) error
	// DropDatabaseAndRole drops a database and the role of its name.
	DropDatabaseAndRole(ctx context.Context, shard, name string) error
	// DropSlot drops a replication slot, ending the walsender that
	// streams it if need be.
	DropSlot(ctx context.Context, shard, slot string) error
	// SetLogin lets a tenant's role log in on shard, or not.
	SetLogin(ctx context.Context, shard, name string, on bool) error
	// SoleSession leaves the tenant's role on shard with one session, of
	// Silo's own as the tenant, and unable to log in.
	SoleSession(ctx context.Context, t *silo.Tenant, shard string) (*pgx.Conn, error)
	// DumpSchema returns the tenant's schema as SQL, dumped as the tenant.
	DumpSchema(ctx context.Context, t *silo.Tenant, shard string, excludeSchemas ...string) (string, error)
	// RetireDatabase renames a moved tenant's old database and role, to
	// be dropped later.
	RetireDatabase(ctx context.Context, id, shard, name string) error
	// Run launches a recorded operation and waits for it.
	Run(ctx context.Context, opID string, wait time.Duration) (provisioner.Result, error)
}

// Config configures a Rebalancer.
type Config struct {
	// Catalog is the catalog database. Required.
	Catalog *pgxpool.Pool
	// Store is the catalog's Go API over Catalog. Required.
	Store *shardmap.Store
	// Dialer builds every connection to a shard. Required.
	Dialer *shardmap.Dialer
	// Engine runs moves: New registers the move operation with it, before
	// the caller starts it. Without an Engine, the Rebalancer only plans.
	Engine *engine.Engine
	// Provisioner does what a move needs of the tenant lifecycle.
	// Required with Engine.
	Provisioner Provisioner
	// Logger gets structured logs. Default slog.Default().
	Logger *slog.Logger
	// Registry gets the move metrics; nil registers none.
	Registry prometheus.Registerer
}

// Rebalancer moves tenants between shards and plans the moves that even
// them out, from the catalog and the shards' database sizes. It is safe
// for concurrent use.
type Rebalancer struct {
	catalog *pgxpool.Pool
	store   *shardmap.Store
	dialer  *shardmap.Dialer
	eng     *engine.Engine
	prov    Provisioner
	log     *slog.Logger
	metrics metrics
}

// New returns a Rebalancer and, with an Engine, registers the move
// operation with it. It returns an error for an invalid Config.
func New(cfg Config) (*Rebalancer, error) {
	switch {
	case cfg.Catalog == nil || cfg.Store == nil || cfg.Dialer == nil:
		return nil, errors.New("rebalancer: Config.Catalog, Store and Dialer are required")
	case cfg.Engine != nil && cfg.Provisioner == nil:
		return nil, errors.New("rebalancer: Config.Provisioner is required to move tenants")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Rebalancer{catalog: cfg.Catalog, store: cfg.Store, dialer: cfg.Dialer, eng: cfg.Engine,
		prov: cfg.Provisioner, log: cfg.Logger, metrics: newMetrics()}
	if cfg.Registry != nil {
		if err := r.metrics.register(cfg.Registry); err != nil {
			return nil, err
		}
	}
	if r.eng != nil {
		r.eng.Register(silo.OpMove, engine.Kind{Plan: r.movePlan, Describe: r.describeMove})
	}
	return r, nil
}

// Report is a plan with the loads it was made from.
type Report struct {
	By     string
	Shards []ShardLoad
	Moves  []Move
}

// ShardLoad is an active shard's load before the plan and after it.
type ShardLoad struct {
	Name, Region          string
	Weight                int
	Tenants, TenantsAfter int
	Bytes, BytesAfter     int64
}

// Plan reads every active shard's active tenants (and, by bytes, their
// databases' sizes) and plans the moves that even them out. A shard whose
// sizes cannot be read makes the plan fail with EUNAVAILABLE.
func (r *Rebalancer) Plan(ctx context.Context, o Options) (*Report, error) {
	if o.By == "" {
		o.By = ByTenants
	}
	if o.By != ByTenants && o.By != ByBytes {
		return nil, silo.Errorf(silo.EINVALID, "balance by %q: must be %s or %s", o.By, ByTenants, ByBytes)
	}
	if o.MaxMoves < 0 || o.MaxMoves > 10000 {
		return nil, silo.Errorf(silo.EINVALID, "max moves %d must be between 0 (no limit) and 10000", o.MaxMoves)
	}
	rows, err := r.catalog.Query(ctx, `
		SELECT s.name, s.region, s.weight, t.id, t.database_name
		FROM shards s LEFT JOIN tenants t ON t.shard = s.name AND t.state = 'active'
		WHERE s.state = 'active' ORDER BY s.name, t.id`)
	if err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable: %v", err)
	}
	var shards []Shard
	dbs := map[string][]string{} // shard -> databases
	for rows.Next() {
		var name, region string
		var weight int
		var id, db *string
		if err := rows.Scan(&name, &region, &weight, &id, &db); err != nil {
			return nil, silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable: %v", err)
		}
		if len(shards) == 0 || shards[len(shards)-1].Name != name {
			shards = append(shards, Shard{Name: name, Region: region, Weight: weight})
		}
		if id != nil {
			sh := &shards[len(shards)-1]
			sh.Tenants = append(sh.Tenants, Tenant{ID: *id})
			dbs[name] = append(dbs[name], *db)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable: %v", err)
	}
	for i := range shards {
		sizes, err := r.sizes(ctx, shards[i].Name, dbs[shards[i].Name])
		if err != nil {
			return nil, err
		}
		for j := range shards[i].Tenants {
			shards[i].Tenants[j].Bytes = sizes[j]
		}
	}
	moves, err := Plan(shards, o)
	if err != nil {
		return nil, silo.WrapError(err, silo.EINVALID, "%v", err)
	}
	rep := &Report{By: o.By, Moves: moves}
	index := map[string]int{}
	for i, sh := range shards {
		var bytes int64
		for _, t := range sh.Tenants {
			bytes += t.Bytes
		}
		index[sh.Name] = i
		rep.Shards = append(rep.Shards, ShardLoad{Name: sh.Name, Region: sh.Region, Weight: sh.Weight,
			Tenants: len(sh.Tenants), TenantsAfter: len(sh.Tenants), Bytes: bytes, BytesAfter: bytes})
	}
	for _, m := range moves {
		from, to := &rep.Shards[index[m.From]], &rep.Shards[index[m.To]]
		from.TenantsAfter--
		to.TenantsAfter++
		from.BytesAfter -= m.Bytes
		to.BytesAfter += m.Bytes
	}
	return rep, nil
}

// Size returns the size of a tenant's database on its shard in bytes, as
// plans weigh it: 0 when the database is not there (a tenant being
// created). It reads pg_catalog as the shard's admin; EUNAVAILABLE when the
// shard cannot be reached.
func (r *Rebalancer) Size(ctx context.Context, t *silo.Tenant) (int64, error) {
	sizes, err := r.sizes(ctx, t.Shard, []string{t.Database})
	if err != nil {
		return 0, err
	}
	return sizes[0], nil
}

// sizes returns the sizes of databases on a shard, in order.
func (r *Rebalancer) sizes(ctx context.Context, shard string, dbs []string) ([]int64, error) {
	if len(dbs) == 0 {
		return nil, nil
	}
	conn, err := r.dialer.ConnectAdmin(ctx, shard, "")
	if err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "shard %q is unavailable: its databases' sizes cannot be read", shard)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `
		SELECT coalesce(pg_catalog.pg_database_size(d.datname), 0)
		FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS want(name, i)
		LEFT JOIN pg_catalog.pg_database d ON d.datname = want.name ORDER BY want.i`, dbs)
	if err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "shard %q: %v", shard, err)
	}
	sizes, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "shard %q: %v", shard, err)
	}
	return sizes, nil
}
