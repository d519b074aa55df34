package reconcile

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// Defaults of Config.
const (
	DefaultConcurrency  = 4
	DefaultQueryTimeout = 10 * time.Second
)

// Dropper removes what Silo made on a shard; the provisioner implements
// it. Each drop is idempotent and runs as the shard's admin.
type Dropper interface {
	DropDatabaseAndRole(ctx context.Context, shard, name string) error
	DropRole(ctx context.Context, shard, role string) error
	DropSlot(ctx context.Context, shard, slot string) error
	DropSubscription(ctx context.Context, shard, db, sub string) error
	DropPublication(ctx context.Context, shard, db, pub string) error
}

// Config configures a Checker.
type Config struct {
	// Store reads the catalog and audits repairs.
	Store *shardmap.Store
	// Dialer builds every connection to a shard.
	Dialer *shardmap.Dialer
	// Dropper carries out repairs. Without it, Repair returns
	// EUNAVAILABLE; Check works.
	Dropper Dropper
	// Concurrency is how many tenant databases are read at once on each
	// shard (shards are read at once). Default 4.
	Concurrency int
	// QueryTimeout bounds each connection to a shard and the reads made on
	// it, so a shard that hangs is reported instead of holding the check.
	// Default 10s.
	QueryTimeout time.Duration
	// Logger gets structured logs. Default slog.Default().
	Logger *slog.Logger
	// Registry gets the checker's metrics; nil registers none.
	Registry prometheus.Registerer
}

func (c Config) withDefaults() Config {
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.QueryTimeout <= 0 {
		c.QueryTimeout = DefaultQueryTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Checker compares the catalog with every shard. It is safe for concurrent
// use; checks and repairs read the fleet and change only what they report.
type Checker struct {
	cfg     Config
	metrics metrics
}

// New returns a Checker. It returns an error when Store or Dialer is
// missing, or when its metrics cannot be registered.
func New(cfg Config) (*Checker, error) {
	if cfg.Store == nil || cfg.Dialer == nil {
		return nil, errors.New("reconcile: Config.Store and Config.Dialer are required")
	}
	c := &Checker{cfg: cfg.withDefaults(), metrics: newMetrics()}
	if cfg.Registry != nil {
		if err := c.metrics.register(cfg.Registry); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Check reads the catalog, then every shard (all at once, each with
// Config.Concurrency of its tenant databases at once), then the catalog
// again, and reports what disagrees. Only what the catalog says in both
// reads counts: what changed in between was in flight, not wrong. A shard
// that cannot be read is a finding (ShardUnreachable), not an error.
//
// It reads shards as their admin, and touches nothing a tenant controls but
// through pg_catalog: each tenant's schema version is read as the tenant's
// own role, and only for active tenants, whose role may log in.
//
// It returns EUNAVAILABLE or ETIMEOUT when the catalog cannot be read, and
// ETIMEOUT when ctx ends first; ctx bounds the whole check.
func (c *Checker) Check(ctx context.Context) (*Report, error) {
	start := time.Now()
	before, err := c.cfg.Store.Owners(ctx)
	if err != nil {
		return nil, err
	}
	shards, err := c.listShards(ctx)
	if err != nil {
		return nil, err
	}
	scans := make([]*shardScan, len(shards))
	var wg sync.WaitGroup
	for i, sh := range shards {
		wg.Go(func() { scans[i] = c.scanShard(ctx, sh, before) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, silo.WrapError(ctx.Err(), silo.ETIMEOUT, "the check did not finish in time: give it a longer timeout")
	}
	after, err := c.cfg.Store.Owners(ctx)
	if err != nil {
		return nil, err
	}
	rep := judge(scans, before, after, time.Now())
	rep.Started, rep.Duration = start, time.Since(start)
	c.metrics.observe(rep)
	c.cfg.Logger.Info("fleet checked", "shards", len(shards), "tenants", rep.Tenants, "findings", len(rep.Findings),
		"duration_ms", rep.Duration.Milliseconds())
	return rep, nil
}

// listShards returns every shard, in any state: draining and disabled
// shards hold tenants too.
func (c *Checker) listShards(ctx context.Context) ([]silo.Shard, error) {
	var out []silo.Shard
	p := silo.Page{Limit: silo.MaxPageLimit}
	for {
		list, err := c.cfg.Store.ListShards(ctx, p)
		if err != nil {
			return nil, err
		}
		out = append(out, list.Items...)
		if list.NextCursor == "" {
			return out, nil
		}
		p.Cursor = list.NextCursor
	}
}
