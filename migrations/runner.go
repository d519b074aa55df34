package migrations

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pressly/goose/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"go.opentelemetry.io/otel/trace"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/shardmap"
	"github.com/silo-db/silo/tracing"
)

// Defaults of RunOptions and Config.
const (
	DefaultConcurrency   = 8
	DefaultPerShard      = 4
	DefaultWorkers       = 8
	DefaultTenantTimeout = 10 * time.Minute
	// MaxConcurrency bounds RunOptions.Concurrency.
	MaxConcurrency = 256
)

// prepareLockClass is the first key of the lease of a run's prepare job.
const prepareLockClass = 0x51_10_0F

// TenantLockClass is the first key of the session advisory lock (on the
// catalog) held on a tenant while its schema is migrated. Anything else that
// must not overlap a migration on a tenant (a move) takes the same lock:
// pg_advisory_lock(TenantLockClass, hashtext(tenant id)).
const TenantLockClass = 0x51_10_0C

// slotClass keys the advisory locks that bound concurrent tenant migrations,
// fleet-wide and per shard.
const slotClass = 0x51_10_0D

// queue is the River queue of migration jobs.
const queue = "silo_migrate"

// Templates brings a shard's template database, and the warm databases made
// from it, to a tenant schema version, so that tenants created during or
// after a run start at its target. The provisioner implements it.
type Templates interface {
	MigrateTemplate(ctx context.Context, shard string, version int64) error
}

// TemplatesFunc adapts a function to Templates.
type TemplatesFunc func(ctx context.Context, shard string, version int64) error

// MigrateTemplate calls f.
func (f TemplatesFunc) MigrateTemplate(ctx context.Context, shard string, version int64) error {
	return f(ctx, shard, version)
}

// Config configures a Runner.
type Config struct {
	// Catalog is the catalog database, migrated.
	Catalog *pgxpool.Pool
	// Store is the catalog's Go API over Catalog.
	Store *shardmap.Store
	// Dialer connects to tenant databases as the tenants' own roles.
	Dialer *shardmap.Dialer
	// Files are the tenant migrations. A directory (os.DirFS) is read
	// again for every run, so new files need no restart.
	Files fs.FS
	// Templates migrates shard templates; required.
	Templates Templates
	// Engine runs the runner's jobs on its River client and recovers the
	// work of servers that died; required. NewRunner adds the runner's
	// jobs to it, and the caller starts it.
	Engine *engine.Engine
	// Workers is how many tenant migrations this server runs at once, at
	// most; a run's Concurrency bounds them fleet-wide. Default 8.
	Workers int
	// ConnectTimeout is not used: the Dialer bounds every connection to a
	// shard (DialerConfig.ConnectTimeout).
	ConnectTimeout time.Duration
	// TenantTimeout bounds one tenant's migration. Default 10m.
	TenantTimeout time.Duration
	// Logger gets structured logs. Default slog.Default().
	Logger *slog.Logger
	// Registry gets the runner's metrics; nil registers none.
	Registry prometheus.Registerer
	// TracerProvider gets a span for a run's preparation
	// ("migration.prepare") and one for each tenant's migration
	// ("migration.tenant"), all in the trace of the request that started
	// the run. Nil makes no spans.
	TracerProvider trace.TracerProvider
}

// Runner applies tenant schema migrations across the fleet: runs of one
// job per tenant in the catalog's River queue, a canary wave first, within
// fleet-wide and per-shard limits, resumable by any server. Its jobs run on
// the River client it is given with UseClient (the provisioner's).
type Runner struct {
	cfg     Config
	log     *slog.Logger
	eng     *engine.Engine
	metrics runnerMetrics
	tracer  trace.Tracer

	mu   sync.Mutex
	down map[string]shardDown // by run and shard: shards that just refused a connection
}

// shardDown remembers a connection failure, so the rest of a shard's
// tenants in the run fail fast instead of each waiting out the connect
// timeout. The next run tries the shard again.
type shardDown struct {
	at  time.Time
	err error
}

// shardDownFor is how long a connection failure marks a shard down.
const shardDownFor = 5 * time.Second

// NewRunner returns a Runner, or an error for an invalid Config.
func NewRunner(cfg Config) (*Runner, error) {
	if cfg.Catalog == nil || cfg.Store == nil || cfg.Dialer == nil || cfg.Templates == nil || cfg.Files == nil || cfg.Engine == nil {
		return nil, errors.New("migrations: Config.Catalog, Store, Dialer, Templates, Files and Engine are required")
	}
	if cfg.Workers == 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.TenantTimeout == 0 {
		cfg.TenantTimeout = DefaultTenantTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Workers < 1 || cfg.ConnectTimeout < 0 || cfg.TenantTimeout < time.Second {
		return nil, errors.New("migrations: Config.Workers must be positive and TenantTimeout at least 1s")
	}
	r := &Runner{cfg: cfg, log: cfg.Logger, eng: cfg.Engine, metrics: newRunnerMetrics(), down: map[string]shardDown{},
		tracer: tracing.Tracer(cfg.TracerProvider, "github.com/silo-db/silo/migrations")}
	if cfg.Registry != nil {
		if err := r.metrics.register(cfg.Registry); err != nil {
			return nil, err
		}
	}
	cfg.Engine.AddJobs(r)
	return r, nil
}

// AddWorkers registers the runner's job workers with a River client's
// workers, before the client is made.
func (r *Runner) AddWorkers(w *river.Workers) {
	river.AddWorker(w, &prepareWorker{r: r})
	river.AddWorker(w, &tenantWorker{r: r})
}

// Queues returns the River queue the runner's jobs run in.
func (r *Runner) Queues() map[string]river.QueueConfig {
	return map[string]river.QueueConfig{queue: {MaxWorkers: r.cfg.Workers}}
}

// PeriodicJobs returns none: runs are started by request.
func (r *Runner) PeriodicJobs() []*river.PeriodicJob { return nil }

// jobs returns the River client, once the engine has started.
func (r *Runner) jobs() (*river.Client[pgx.Tx], error) {
	c := r.eng.River()
	if c == nil {
		return nil, silo.Errorf(silo.EUNAVAILABLE, "the migration runner's job client is not running")
	}
	return c, nil
}

// RunOptions are the choices of a run.
type RunOptions struct {
	// Direction is silo.MigrateUp (the default) or silo.MigrateDown.
	Direction string
	// To is the target version: by default the latest file's for up;
	// required for down.
	To *int64
	// Concurrency bounds the tenants migrated at once, fleet-wide.
	// Default 8.
	Concurrency int
	// PerShard bounds the tenants migrated at once on one shard. Default 4.
	PerShard int
	// Canary is how many tenants, spread over shards, are migrated first;
	// if any fails, the run stops before the rest. Default: one per shard
	// with tenants to migrate. 0 turns the canary wave off.
	Canary *int
	// ContinueOnError goes on past a failed tenant (after the canary
	// wave); by default the run stops at the first failure.
	ContinueOnError bool
}

// StartRun checks the migration files, tries them on a copy of a shard's
// template, and starts a run: it returns at once, the run goes on in the
// background. It refuses a second run while one is in progress (ECONFLICT)
// and files that are malformed or fail (EINVALID), before any tenant is
// touched.
func (r *Runner) StartRun(ctx context.Context, o RunOptions) (*silo.MigrationRun, error) {
	client, err := r.jobs()
	if err != nil {
		return nil, err
	}
	if o.Direction == "" {
		o.Direction = silo.MigrateUp
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.PerShard == 0 {
		o.PerShard = DefaultPerShard
	}
	switch {
	case o.Direction != silo.MigrateUp && o.Direction != silo.MigrateDown:
		return nil, silo.Errorf(silo.EINVALID, "direction %q must be up or down", o.Direction)
	case o.Concurrency < 1 || o.Concurrency > MaxConcurrency:
		return nil, silo.Errorf(silo.EINVALID, "concurrency %d must be between 1 and %d", o.Concurrency, MaxConcurrency)
	case o.PerShard < 1 || o.PerShard > MaxConcurrency:
		return nil, silo.Errorf(silo.EINVALID, "per-shard concurrency %d must be between 1 and %d", o.PerShard, MaxConcurrency)
	case o.Canary != nil && (*o.Canary < 0 || *o.Canary > 10000):
		return nil, silo.Errorf(silo.EINVALID, "canary %d must be between 0 and 10000", *o.Canary)
	case o.Direction == silo.MigrateDown && o.To == nil:
		return nil, silo.Errorf(silo.EINVALID, "a down run needs a target version (--to)")
	case o.To != nil && *o.To < 0:
		return nil, silo.Errorf(silo.EINVALID, "target version %d must not be negative", *o.To)
	}
	files := r.cfg.Files
	if err := CheckFiles(files); err != nil {
		return nil, silo.WrapError(err, silo.EINVALID, "tenant migrations: %v", err)
	}
	latest, err := LatestVersion(files)
	if err != nil {
		return nil, silo.WrapError(err, silo.EINVALID, "%v", err)
	}
	target := latest
	if o.To != nil {
		target = *o.To
		if err := checkVersion(files, target); err != nil {
			return nil, err
		}
	}
	if o.Direction == silo.MigrateDown {
		var highest int64
		if err := r.cfg.Catalog.QueryRow(ctx, `
			SELECT coalesce(max(schema_version), 0) FROM tenants WHERE state IN ('active', 'suspended')`).Scan(&highest); err != nil {
			return nil, shardmap.CatalogError(err, "tenant migrations")
		}
		if cur, err := TargetVersion(ctx, r.cfg.Catalog, func() (int64, error) { return latest, nil }); err == nil {
			highest = max(highest, cur)
		}
		if target >= highest {
			return nil, silo.Errorf(silo.EINVALID, "down to version %d: no tenant is above it (the highest is at %d)", target, highest)
		}
		if err := CheckDown(files, highest, target); err != nil {
			return nil, silo.WrapError(err, silo.EINVALID, "%v", err)
		}
	}
	canary := 0
	if o.Canary != nil {
		canary = *o.Canary
	} else if err := r.cfg.Catalog.QueryRow(ctx, `
		SELECT count(DISTINCT shard) FROM tenants
		WHERE state IN ('active', 'suspended') AND schema_version <> $1`, target).Scan(&canary); err != nil {
		return nil, shardmap.CatalogError(err, "tenant migrations")
	}
	if active, err := r.activeRun(ctx); err != nil {
		return nil, err
	} else if active != "" {
		return nil, silo.Errorf(silo.ECONFLICT, "migration run %s is in progress: wait for it, or stop it", active)
	}
	if err := r.dryRun(ctx, target); err != nil {
		return nil, err
	}

	id := uuid.NewString()
	actor := silo.ActorFrom(ctx)
	params := map[string]any{"direction": o.Direction, "target": target, "concurrency": o.Concurrency,
		"perShard": o.PerShard, "canary": canary, "continueOnError": o.ContinueOnError}
	err = r.cfg.Store.Mutate(ctx, "migration.start", id, params, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO migration_runs (id, direction, target_version, concurrency, per_shard, canary, continue_on_error, created_by)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			id, o.Direction, target, o.Concurrency, o.PerShard, canary, o.ContinueOnError, actor.Name)
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "23505" {
			return silo.Errorf(silo.ECONFLICT, "another migration run is in progress: wait for it, or stop it")
		}
		if err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO tenant_schema_target (version, run_id) VALUES ($1, $2)
			ON CONFLICT (singleton) DO UPDATE SET version = $1, run_id = $2, updated_at = now()`, target, id); err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		_, err = client.InsertTx(ctx, tx, prepareArgs{RunID: id, Traceparent: tracing.Traceparent(ctx)}, &river.InsertOpts{Queue: queue, MaxAttempts: 5})
		return err
	})
	if err != nil {
		return nil, err
	}
	r.log.InfoContext(ctx, "migration run started", "run", id, "direction", o.Direction, "target", target,
		"concurrency", o.Concurrency, "perShard", o.PerShard, "canary", canary)
	return r.Run(ctx, id)
}

// checkVersion refuses a target that is neither 0 nor a file's version.
func checkVersion(files fs.FS, v int64) error {
	if v == 0 {
		return nil
	}
	names, err := fs.Glob(files, "*.sql")
	if err != nil {
		return err
	}
	for _, name := range names {
		if n, err := goose.NumericComponent(name); err == nil && n == v {
			return nil
		}
	}
	return silo.Errorf(silo.EINVALID, "version %d is not among the tenant migration files", v)
}

// TargetVersion returns the tenant schema version new tenants are born at:
// the target of the latest run. Before the first run, it records the
// version latest returns (the latest file's) as the target, so that files
// added later wait for a run; latest is called only then.
func TargetVersion(ctx context.Context, catalog interface {
	QueryRow(context.Context, string, ...any) pgx.Row
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, latest func() (int64, error)) (int64, error) {
	for {
		var v int64
		err := catalog.QueryRow(ctx, `SELECT version FROM tenant_schema_target`).Scan(&v)
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return 0, shardmap.CatalogError(err, "tenant migrations")
		}
		// The first: whoever inserts first sets it, and the next SELECT, a
		// statement of its own, sees whichever row won.
		v, err = latest()
		if err != nil {
			return 0, err
		}
		if _, err := catalog.Exec(ctx, `
			INSERT INTO tenant_schema_target (version) VALUES ($1) ON CONFLICT (singleton) DO NOTHING`, v); err != nil {
			return 0, shardmap.CatalogError(err, "tenant migrations")
		}
	}
}

// activeRun returns the id of the run in progress, or "".
func (r *Runner) activeRun(ctx context.Context) (string, error) {
	var id string
	err := r.cfg.Catalog.QueryRow(ctx, `
		SELECT id FROM migration_runs WHERE state IN ('preparing', 'canary', 'running')`).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", shardmap.CatalogError(err, "tenant migrations")
	}
	return id, nil
}

// dryRun applies the migrations to a scratch copy of the first active
// shard's template (or to an empty database when it has none yet), and
// drops it: files that fail there are refused before any tenant is touched.
func (r *Runner) dryRun(ctx context.Context, target int64) error {
	var shard string
	err := r.cfg.Catalog.QueryRow(ctx, `SELECT name FROM shards WHERE state = 'active' ORDER BY name LIMIT 1`).Scan(&shard)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // no shard, so no tenant and no template
	}
	if err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	admin, err := r.cfg.Dialer.ConnectAdmin(ctx, shard, "")
	if err != nil {
		return silo.WrapError(err, silo.EUNAVAILABLE, "shard %q is unavailable for the trial run: %s", shard, silo.ErrorMessage(err))
	}
	defer admin.Close(context.WithoutCancel(ctx))
	scratch := "silo_check_" + hex.EncodeToString(randomBytes(6))
	create := "CREATE DATABASE " + pgx.Identifier{scratch}.Sanitize()
	var hasTemplate bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = 'silo_template')`).Scan(&hasTemplate); err != nil {
		return silo.WrapError(err, silo.EUNAVAILABLE, "shard %q: %v", shard, err)
	}
	if hasTemplate {
		create += " TEMPLATE silo_template"
	}
	for backoff := 20 * time.Millisecond; ; backoff = min(2*backoff, 500*time.Millisecond) {
		_, err = admin.Exec(ctx, create)
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != "55006" {
			break // 55006: the template is in use (being migrated or cloned)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
	}
	if err != nil {
		return silo.WrapError(err, silo.EUNAVAILABLE, "shard %q: make a scratch database: %v", shard, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, err := admin.Exec(dctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{scratch}.Sanitize()+" WITH (FORCE)"); err != nil {
			r.log.Warn("scratch database not dropped", "shard", shard, "database", scratch, "err", err)
		}
	}()
	cfg, err := r.cfg.Dialer.AdminConfig(ctx, shard, scratch)
	if err != nil {
		return err
	}
	delete(cfg.RuntimeParams, "search_path") // the migrations create in public
	pool, err := shardmap.PoolOf(ctx, cfg, 2)
	if err != nil {
		return silo.WrapError(err, silo.EUNAVAILABLE, "shard %q: %v", shard, err)
	}
	defer pool.Close()
	if _, _, err := MigrateTenantTo(ctx, pool, r.cfg.Files, target); err != nil {
		what := "an empty database"
		if hasTemplate {
			what = fmt.Sprintf("a copy of shard %q's template", shard)
		}
		return silo.WrapError(err, silo.EINVALID, "the migrations to version %d fail on %s, so no tenant was touched: %v", target, what, err)
	}
	return nil
}

// StopRun stops a run in progress: tenants not yet started are skipped,
// the ones being migrated finish.
func (r *Runner) StopRun(ctx context.Context, id string) (*silo.MigrationRun, error) {
	if err := validRunID(id); err != nil {
		return nil, err
	}
	err := r.cfg.Store.Mutate(ctx, "migration.stop", id, nil, func(tx pgx.Tx) error {
		var state string
		err := tx.QueryRow(ctx, `SELECT state FROM migration_runs WHERE id = $1 FOR UPDATE`, id).Scan(&state)
		if errors.Is(err, pgx.ErrNoRows) {
			return silo.Errorf(silo.ENOTFOUND, "migration run %s not found", id)
		}
		if err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		if state != silo.RunPreparing && state != silo.RunCanary && state != silo.RunRunning {
			return silo.Errorf(silo.ECONFLICT, "migration run %s is %s, not in progress", id, state)
		}
		return finishRun(ctx, tx, id, silo.RunStopped, "stopped by "+silo.ActorFrom(ctx).Name)
	})
	if err != nil {
		return nil, err
	}
	return r.Run(ctx, id)
}

// finishRun ends a run: its pending tenants are skipped.
func finishRun(ctx context.Context, tx pgx.Tx, id, state, msg string) error {
	if _, err := tx.Exec(ctx, `
		UPDATE migration_tenants SET state = 'skipped', finished_at = now()
		WHERE run_id = $1 AND state = 'pending'`, id); err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	_, err := tx.Exec(ctx, `
		UPDATE migration_runs SET state = $2, error = $3, updated_at = now(), finished_at = now() WHERE id = $1`, id, state, msg)
	return shardmap.CatalogError(err, "tenant migrations")
}

const runColumns = `id, direction, target_version, state, concurrency, per_shard, canary, continue_on_error,
	error, created_by, created_at, updated_at, finished_at, total`

func scanRun(row pgx.Row) (*silo.MigrationRun, error) {
	var run silo.MigrationRun
	err := row.Scan(&run.ID, &run.Direction, &run.TargetVersion, &run.State, &run.Concurrency, &run.PerShard,
		&run.Canary, &run.ContinueOnError, &run.Error, &run.CreatedBy, &run.CreatedAt, &run.UpdatedAt,
		&run.FinishedAt, &run.Total)
	return &run, err
}

// Run returns a run with its progress.
func (r *Runner) Run(ctx context.Context, id string) (*silo.MigrationRun, error) {
	if err := validRunID(id); err != nil {
		return nil, err
	}
	run, err := scanRun(r.cfg.Catalog.QueryRow(ctx, `SELECT `+runColumns+` FROM migration_runs WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, silo.Errorf(silo.ENOTFOUND, "migration run %s not found", id)
	}
	if err != nil {
		return nil, shardmap.CatalogError(err, "tenant migrations")
	}
	return run, r.progress(ctx, r.cfg.Catalog, run)
}

// Runs returns the latest runs, newest first.
func (r *Runner) Runs(ctx context.Context, limit int) ([]*silo.MigrationRun, error) {
	if limit < 1 || limit > silo.MaxPageLimit {
		return nil, silo.Errorf(silo.EINVALID, "limit %d must be between 1 and %d", limit, silo.MaxPageLimit)
	}
	return r.runs(ctx, r.cfg.Catalog, limit)
}

// querier is the catalog pool, or a transaction on it.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func (r *Runner) runs(ctx context.Context, q querier, limit int) ([]*silo.MigrationRun, error) {
	rows, err := q.Query(ctx, `SELECT `+runColumns+` FROM migration_runs ORDER BY created_at DESC LIMIT $1`, limit)
	if err != nil {
		return nil, shardmap.CatalogError(err, "tenant migrations")
	}
	runs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*silo.MigrationRun, error) { return scanRun(row) })
	if err != nil {
		return nil, shardmap.CatalogError(err, "tenant migrations")
	}
	for _, run := range runs {
		if err := r.progress(ctx, q, run); err != nil {
			return nil, err
		}
	}
	return runs, nil
}

// progress fills in a run's counts by state and, while it runs, its ETA.
func (r *Runner) progress(ctx context.Context, q querier, run *silo.MigrationRun) error {
	rows, err := q.Query(ctx, `
		SELECT state, count(*), min(started_at) FROM migration_tenants WHERE run_id = $1 GROUP BY state`, run.ID)
	if err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	var first *time.Time
	for rows.Next() {
		var state string
		var n int
		var started *time.Time
		if err := rows.Scan(&state, &n, &started); err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		if started != nil && (first == nil || started.Before(*first)) {
			first = started
		}
		switch state {
		case silo.RunTenantPending:
			run.Pending = n
		case silo.RunTenantRunning:
			run.Running = n
		case silo.RunTenantDone:
			run.Done = n
		case silo.RunTenantFailed:
			run.Failed = n
		case silo.RunTenantSkipped:
			run.Skipped = n
		}
	}
	if err := rows.Err(); err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	finished := run.Done + run.Failed
	if run.Active() && first != nil && finished > 0 {
		elapsed := time.Since(*first)
		eta := time.Duration(float64(elapsed) / float64(finished) * float64(run.Pending+run.Running)).Round(time.Second)
		run.ETA = &eta
	}
	return nil
}

func validRunID(id string) error {
	// The canonical form only: the catalog compares ids as text.
	if u, err := uuid.Parse(id); err != nil || u.String() != id {
		return silo.Errorf(silo.EINVALID, "migration run id %q is not a UUID", id)
	}
	return nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}
