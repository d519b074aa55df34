package provisioner

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/shardmap"
)

// Defaults of Config.
const (
	DefaultWarmPoolSize        = 2
	DefaultGracePeriod         = 7 * 24 * time.Hour
	DefaultMaintenanceInterval = 30 * time.Second
)

// Config configures a Provisioner.
type Config struct {
	// Catalog is the catalog database (migrated, River tables included).
	Catalog *pgxpool.Pool
	// Store is the catalog's Go API over Catalog.
	Store *shardmap.Store
	// Engine runs the provisioner's operations and jobs; New registers
	// them with it, and the caller starts it.
	Engine *engine.Engine
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
	// MaintenanceInterval is how often templates and warm pools are checked.
	MaintenanceInterval time.Duration
	// ConnectTimeout bounds each connection to a shard. Default 5s.
	ConnectTimeout time.Duration
	// PgDump is the pg_dump binary used by Export and DumpSchema. Default:
	// "pg_dump" on PATH.
	PgDump string
	// RetireAfter is how long a moved tenant's old database is kept on its
	// old shard before it is dropped. Default 24h.
	RetireAfter time.Duration
	// Logger gets structured logs. Default slog.Default().
	Logger *slog.Logger
	// Registry gets the provisioner's metrics; nil registers none.
	Registry prometheus.Registerer
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
	if c.MaintenanceInterval == 0 {
		c.MaintenanceInterval = DefaultMaintenanceInterval
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 5 * time.Second
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
	case c.Catalog == nil || c.Store == nil || c.Engine == nil:
		return errors.New("provisioner: Config.Catalog, Config.Store and Config.Engine are required")
	case c.GracePeriod < 0:
		return errors.New("provisioner: the grace period must not be negative")
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
	eng     *engine.Engine
	metrics metrics

	shards sync.Mutex
	admins map[string]*ShardAdmin // by shard name
	tmpl   templates

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
		cfg:      cfg,
		store:    cfg.Store,
		catalog:  cfg.Catalog,
		sealer:   sealer,
		dialer:   cfg.Dialer,
		log:      cfg.Logger,
		eng:      cfg.Engine,
		metrics:  newMetrics(),
		admins:   map[string]*ShardAdmin{},
		tmpl:     templates{version: map[string]int64{}, setUp: map[string]bool{}},
		stopping: make(chan struct{}),
	}
	if cfg.Registry != nil {
		if err := p.metrics.register(cfg.Registry); err != nil {
			return nil, err
		}
	}

	p.eng.Register(silo.OpCreate, engine.Kind{Plan: p.createPlan, Finished: p.created})
	for _, kind := range []silo.OperationKind{silo.OpSuspend, silo.OpResume, silo.OpDelete, silo.OpPurge} {
		p.eng.Register(kind, engine.Kind{Plan: p.plan})
	}
	p.eng.AddJobs(p)
	return p, nil
}

// AddWorkers registers the provisioner's job workers (engine.JobSource).
func (p *Provisioner) AddWorkers(w *river.Workers) {
	river.AddWorker(w, &maintainWorker{p: p})
	river.AddWorker(w, &purgeSweepWorker{p: p})
}

// Queues returns the queues of the provisioner's jobs: River's default.
func (p *Provisioner) Queues() map[string]river.QueueConfig { return nil }

// PeriodicJobs returns template and warm pool upkeep, and the purge of
// deleted tenants past their grace period.
func (p *Provisioner) PeriodicJobs() []*river.PeriodicJob {
	return []*river.PeriodicJob{
		river.NewPeriodicJob(river.PeriodicInterval(p.cfg.MaintenanceInterval),
			func() (river.JobArgs, *river.InsertOpts) { return maintainArgs{}, uniqueOpts() },
			&river.PeriodicJobOpts{ID: "maintain-shards", RunOnStart: true}),
		river.NewPeriodicJob(river.PeriodicInterval(time.Minute),
			func() (river.JobArgs, *river.InsertOpts) { return purgeSweepArgs{}, uniqueOpts() },
			&river.PeriodicJobOpts{ID: "purge-expired", RunOnStart: true}),
	}
}

// Stop waits for the provisioner's background work (bounded by ctx) and
// closes its shard connections. Stop the engine first: its operations use
// them.
func (p *Provisioner) Stop(ctx context.Context) error {
	p.stopOnce.Do(func() { close(p.stopping) })
	done := make(chan struct{})
	go func() { p.inflight.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.shards.Lock()
	for name, sc := range p.admins {
		sc.pool.Close()
		delete(p.admins, name)
	}
	p.shards.Unlock()
	return err
}
