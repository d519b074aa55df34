package rebalancer

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/silo-db/silo"
)

// ShardDSNs gives the admin DSN of a shard; the shardmap.Store has it.
type ShardDSNs interface {
	ShardDSN(ctx context.Context, name string) (string, error)
}

// Rebalancer reads the fleet's load from the catalog and the shards, and
// plans moves.
type Rebalancer struct {
	catalog        *pgxpool.Pool
	dsns           ShardDSNs
	mover          Mover
	connectTimeout time.Duration
}

// New returns a Rebalancer over the catalog. Without a mover, it only
// plans.
func New(catalog *pgxpool.Pool, dsns ShardDSNs, mover Mover, connectTimeout time.Duration) (*Rebalancer, error) {
	if catalog == nil || dsns == nil {
		return nil, errors.New("rebalancer: the catalog and shard DSNs are required")
	}
	if connectTimeout <= 0 {
		connectTimeout = 5 * time.Second
	}
	return &Rebalancer{catalog: catalog, dsns: dsns, mover: mover, connectTimeout: connectTimeout}, nil
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

// sizes returns the sizes of databases on a shard, in order.
func (r *Rebalancer) sizes(ctx context.Context, shard string, dbs []string) ([]int64, error) {
	if len(dbs) == 0 {
		return nil, nil
	}
	dsn, err := r.dsns.ShardDSN(ctx, shard)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, silo.Errorf(silo.EINTERNAL, "shard %q has an invalid DSN", shard)
	}
	cfg.ConnectTimeout = r.connectTimeout
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "shard %q is unavailable: its databases' sizes are needed for a plan", shard)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `
		SELECT coalesce(pg_database_size(d.datname), 0)
		FROM unnest($1::text[]) WITH ORDINALITY AS want(name, i)
		LEFT JOIN pg_database d ON d.datname = want.name ORDER BY want.i`, dbs)
	if err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "shard %q: %v", shard, err)
	}
	sizes, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "shard %q: %v", shard, err)
	}
	return sizes, nil
}
