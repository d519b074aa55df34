package provisioner

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/shardmap"
)

// Defaults of Config.
const (
	DefaultWarmPoolSize        = 2
	DefaultGracePeriod         = 7 * 24 * time.Hour
	DefaultRecoveryDelay       = 30 * time.Second
	DefaultMaxConcurrentOps    = 8
	DefaultMaintenanceInterval = 30 * time.Second
)

// Config configures a Provisioner.
type Config struct {
	// Catalog is the catalog database (migrated, River tables included).
	Catalog *pgxpool.Pool
	// Store is the catalog's Go API over Catalog.
	Store *shardmap.Store
	// SecretKey seals tenant role passwords in the catalog: a key ring,
	// the current key (shardmap.SecretKeyLen bytes) then previous ones.
	SecretKey []byte
	// Dialer builds every connection to a shard. Default: one over Store
	// and SecretKey.
	Dialer *shardmap.Dialer
	// TenantMigrations are goose SQL files. Default: the embedded example.
	TenantMigrations fs.FS
	// TenantLimits are the resource bounds of a tenant created without
	// its own. Default silo.DefaultTenantLimits().
	TenantLimits silo.TenantLimits
	// WarmPoolSize is how many ready databases each active shard keeps.
	// 0 takes the default; a negative value turns the pool off.
	WarmPoolSize int
	// GracePeriod is how long a deleted tenant's database is kept before it
	// is purged.
	GracePeriod time.Duration
	// RecoveryDelay is how long after it starts an operation may be taken
	// over by another server if its own has not finished it (and seems gone).
	RecoveryDelay time.Duration
	// MaintenanceInterval is how often templates and warm pools are checked.
	MaintenanceInterval time.Duration
	// MaxConcurrentOps bounds the operations this server runs at once.
	MaxConcurrentOps int
	// ConnectTimeout bounds each connection to a shard. Default 5s.
	ConnectTimeout time.Duration
	// StepTimeout bounds each step of an operation, so a shard that hangs
	// fails the step instead of holding the operation. Default 30s.
	StepTimeout time.Duration
	// PgDump is the pg_dump binary used by Export and moves. Default:
	// "pg_dump" on PATH.
	PgDump string
	// RetireAfter is how long a moved tenant's old database is kept on its
	// old shard before it is dropped. Default 24h.
	RetireAfter time.Duration
	// Logger gets structured logs. Default slog.Default().
	Logger *slog.Logger
	// Registry gets the provisioner's metrics; nil registers none.
	Registry prometheus.Registerer
	// Jobs are other services whose River jobs run on the provisioner's
	// client, in the catalog's job queue: the migration runner.
	Jobs []JobSource
}

// JobSource is a service with River jobs of its own, run by the
// provisioner's River client.
type JobSource interface {
	// AddWorkers registers the service's workers.
	AddWorkers(*river.Workers)
	// Queues returns the service's queues.
	Queues() map[string]river.QueueConfig
	// UseClient hands the service the client, to insert its jobs.
	UseClient(*river.Client[pgx.Tx])
}

func (c Config) withDefaults() Config {
	if c.TenantMigrations == nil {
		c.TenantMigrations, _ = migrations.TenantFS("")
	}
	if c.TenantLimits == (silo.TenantLimits{}) {
		c.TenantLimits = silo.DefaultTenantLimits()
	}
	if c.WarmPoolSize == 0 {
		c.WarmPoolSize = DefaultWarmPoolSize
	}
	if c.WarmPoolSize < 0 {
		c.WarmPoolSize = 0
	}
	if c.GracePeriod == 0 {
		c.GracePeriod = DefaultGracePeriod
	}
	if c.RecoveryDelay == 0 {
		c.RecoveryDelay = DefaultRecoveryDelay
	}
	if c.MaintenanceInterval == 0 {
		c.MaintenanceInterval = DefaultMaintenanceInterval
	}
	if c.MaxConcurrentOps == 0 {
		c.MaxConcurrentOps = DefaultMaxConcurrentOps
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	if c.StepTimeout == 0 {
		c.StepTimeout = 30 * time.Second
	}
	if c.RetireAfter == 0 {
		c.RetireAfter = DefaultRetireAfter
	}
	if c.PgDump == "" {
		c.PgDump = "pg_dump"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Catalog == nil || c.Store == nil:
		return errors.New("provisioner: Config.Catalog and Config.Store are required")
	case c.GracePeriod < 0:
		return errors.New("provisioner: the grace period must not be negative")
	case c.RecoveryDelay < time.Second:
		return errors.New("provisioner: the recovery delay must be at least 1s")
	case c.MaxConcurrentOps < 1:
		return errors.New("provisioner: MaxConcurrentOps must be at least 1")
	}
	if err := c.TenantLimits.Validate(); err != nil {
		return fmt.Errorf("provisioner: default tenant limits: %s", silo.ErrorMessage(err))
	}
	return nil
}

// Provisioner runs tenant lifecycle operations. Create it with New, then
// Start it; it is safe for concurrent use.
type Provisioner struct {
	cfg     Config
	store   *shardmap.Store
	catalog *pgxpool.Pool
	sealer  *shardmap.Sealer
	dialer  *shardmap.Dialer
	log     *slog.Logger
	river   *river.Client[pgx.Tx]
	slots   chan struct{} // bounds concurrent operations
	metrics metrics

	shards    sync.Mutex
	shardConn map[string]*shardConn // by shard name
	tmpl      templates

	inflight sync.WaitGroup
	stopping chan struct{}
	stopOnce sync.Once
}

// New returns a Provisioner. It returns an error for an invalid Config or
// an unreadable tenant migration directory.
func New(cfg Config) (*Provisioner, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	sealer, err := shardmap.NewSealer(cfg.SecretKey)
	if err != nil {
		return nil, fmt.Errorf("provisioner: %w", err)
	}
	if _, err := migrations.LatestVersion(cfg.TenantMigrations); err != nil {
		return nil, fmt.Errorf("provisioner: %w", err)
	}
	if cfg.Dialer == nil {
		if cfg.Dialer, err = shardmap.NewDialer(shardmap.DialerConfig{Store: cfg.Store, Sealer: sealer,
			ConnectTimeout: cfg.ConnectTimeout, ApplicationName: "silo-provisioner", Logger: cfg.Logger}); err != nil {
			return nil, fmt.Errorf("provisioner: %w", err)
		}
	}
	p := &Provisioner{
		cfg:       cfg,
		store:     cfg.Store,
		catalog:   cfg.Catalog,
		sealer:    sealer,
		dialer:    cfg.Dialer,
		log:       cfg.Logger,
		slots:     make(chan struct{}, cfg.MaxConcurrentOps),
		metrics:   newMetrics(),
		shardConn: map[string]*shardConn{},
		tmpl:      templates{version: map[string]int64{}, setUp: map[string]bool{}},
		stopping:  make(chan struct{}),
	}
	if cfg.Registry != nil {
		if err := p.metrics.register(cfg.Registry); err != nil {
			return nil, err
		}
	}

	workers := river.NewWorkers()
	river.AddWorker(workers, &operationWorker{p: p})
	river.AddWorker(workers, &maintainWorker{p: p})
	river.AddWorker(workers, &purgeSweepWorker{p: p})
	queues := map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 4}}
	for _, src := range cfg.Jobs {
		src.AddWorkers(workers)
		maps.Copy(queues, src.Queues())
	}
	p.river, err = river.NewClient(riverpgxv5.New(cfg.Catalog), &river.Config{
		Logger:  cfg.Logger.With("component", "river"),
		Workers: workers,
		Queues:  queues,
		PeriodicJobs: []*river.PeriodicJob{
			river.NewPeriodicJob(river.PeriodicInterval(cfg.MaintenanceInterval),
				func() (river.JobArgs, *river.InsertOpts) { return maintainArgs{}, uniqueOpts() },
				&river.PeriodicJobOpts{ID: "maintain-shards", RunOnStart: true}),
			river.NewPeriodicJob(river.PeriodicInterval(time.Minute),
				func() (river.JobArgs, *river.InsertOpts) { return purgeSweepArgs{}, uniqueOpts() },
				&river.PeriodicJobOpts{ID: "purge-expired", RunOnStart: true}),
		},
		// Operations are run at once by the server that takes the request;
		// River only resumes them, so a second's latency costs nothing. A
		// migration run's tenant jobs take tens of milliseconds each: a
		// worker that frees up fetches the next within 10 ms.
		FetchCooldown:     10 * time.Millisecond,
		FetchPollInterval: time.Second,
		JobTimeout:        10 * time.Minute,
		// A job whose server died is run again after this long: longer
		// than any job may take (operations and tenant migrations stop at
		// about 11 minutes), shorter than River's default hour.
		RescueStuckJobsAfter: 15 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("provisioner: river client: %w", err)
	}
	for _, src := range cfg.Jobs {
		src.UseClient(p.river)
	}
	return p, nil
}

// Start starts the job workers: operation recovery, template and warm pool
// upkeep, and purging after the grace period. ctx bounds the start only.
func (p *Provisioner) Start(ctx context.Context) error {
	if err := p.river.Start(ctx); err != nil {
		return fmt.Errorf("provisioner: start river: %w", err)
	}
	return nil
}

// Stop lets operations in flight finish (bounded by ctx; an operation cut
// short is resumed later by another server), stops the workers and closes
// shard connections.
func (p *Provisioner) Stop(ctx context.Context) error {
	p.stopOnce.Do(func() { close(p.stopping) })
	done := make(chan struct{})
	go func() { p.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	err := p.river.Stop(ctx)
	p.shards.Lock()
	for name, sc := range p.shardConn {
		sc.pool.Close()
		delete(p.shardConn, name)
	}
	p.shards.Unlock()
	return err
}
