package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"go.opentelemetry.io/otel/trace"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
	"github.com/silo-db/silo/tracing"
)

// TraceParam is the operation parameter that holds the W3C traceparent of
// the request that started the operation: its runs' spans are children of
// that request's.
const TraceParam = "traceparent"

// Defaults of Config.
const (
	DefaultStepTimeout      = 30 * time.Second
	DefaultRecoveryDelay    = 2 * time.Second
	DefaultMaxConcurrentOps = 8
	// DefaultMaxRunTime bounds one run of an operation on one server: the
	// longest step (a move's initial copy, an hour) and the rest.
	DefaultMaxRunTime = 70 * time.Minute
)

// Config configures an Engine.
type Config struct {
	// Catalog is the catalog database (migrated, River tables included).
	Catalog *pgxpool.Pool
	// Store is the catalog's Go API over Catalog.
	Store *shardmap.Store
	// StepTimeout bounds each step that sets no timeout of its own, so a
	// shard that hangs fails the step instead of holding the operation.
	StepTimeout time.Duration
	// RecoveryDelay is how long a running operation whose server is gone
	// (its lease, a session lock on the catalog, is free) waits before
	// another server takes it over. At least 1s.
	RecoveryDelay time.Duration
	// MaxConcurrentOps bounds the operations this server runs at once.
	MaxConcurrentOps int
	// MaxRunTime bounds one run of an operation on this server.
	MaxRunTime time.Duration
	// Failpoints are armed failpoints, for crash tests. Default: those of
	// the SILO_FAILPOINTS environment variable.
	Failpoints *Failpoints
	// Logger gets structured logs. Default slog.Default().
	Logger *slog.Logger
	// Registry gets the engine's metrics; nil registers none.
	Registry prometheus.Registerer
	// TracerProvider gets a span for each run of an operation and one for
	// each of its steps, in the trace of the request that started the
	// operation (see Insert), on whichever server runs it. Nil makes no
	// spans.
	TracerProvider trace.TracerProvider
}

// JobSource is a service with River jobs of its own, run by the engine's
// River client: the provisioner's upkeep, the migration runner.
type JobSource interface {
	// AddWorkers registers the service's workers.
	AddWorkers(*river.Workers)
	// Queues returns the service's queues.
	Queues() map[string]river.QueueConfig
	// PeriodicJobs returns the service's periodic jobs.
	PeriodicJobs() []*river.PeriodicJob
}

// Kind is how the engine carries out one kind of operation.
type Kind struct {
	// Plan returns the plan of an operation, from its record and params.
	// It is called for every run, so a resumed run plans again.
	Plan func(op *silo.Operation, params map[string]any) (Plan, error)
	// Finished, if set, is called once the operation has ended (cause nil
	// when it succeeded), for the kind's own metrics.
	Finished func(ctx context.Context, op *silo.Operation, params map[string]any, cause error)
	// Describe, if set, adds the kind's outcome to an operation being
	// shown (a move's path and pause).
	Describe func(ctx context.Context, op *silo.Operation) error
}

// Engine runs durable operations: plans of idempotent steps with undo
// steps and a point of no return, recorded in the catalog as they go,
// resumed by any server when theirs dies, and it owns the River client
// every service's jobs run on. Create it with New, register kinds and job
// sources, then Start it.
type Engine struct {
	cfg     Config
	store   *shardmap.Store
	catalog *pgxpool.Pool
	log     *slog.Logger
	fp      *Failpoints
	metrics metrics
	tracer  trace.Tracer

	mu      sync.Mutex
	kinds   map[silo.OperationKind]Kind
	sources []JobSource
	river   *river.Client[pgx.Tx]
	cancels map[string]context.CancelCauseFunc // operations running here

	// id is this server's River client id; lease, a catalog connection of
	// its own, holds the server's lease on it while the server lives.
	id       string
	lease    *pgx.Conn
	suspects map[int64]bool // jobs whose server seemed gone at the last sweep (the sweep's goroutine only)

	slots    chan struct{} // bounds concurrent operations
	inflight sync.WaitGroup
	stopping chan struct{}
	stopOnce sync.Once
	stopErr  error
	// base is the parent of every run's context; cancelled when Stop's
	// grace is over, so steps still running end.
	base       context.Context
	cancelBase context.CancelFunc
}

// New returns an Engine, or an error for an invalid Config.
func New(cfg Config) (*Engine, error) {
	if cfg.Catalog == nil || cfg.Store == nil {
		return nil, errors.New("engine: Config.Catalog and Config.Store are required")
	}
	if cfg.StepTimeout == 0 {
		cfg.StepTimeout = DefaultStepTimeout
	}
	if cfg.RecoveryDelay == 0 {
		cfg.RecoveryDelay = DefaultRecoveryDelay
	}
	if cfg.MaxConcurrentOps == 0 {
		cfg.MaxConcurrentOps = DefaultMaxConcurrentOps
	}
	if cfg.MaxRunTime == 0 {
		cfg.MaxRunTime = DefaultMaxRunTime
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.RecoveryDelay < time.Second:
		return nil, errors.New("engine: the recovery delay must be at least 1s")
	case cfg.MaxConcurrentOps < 1:
		return nil, errors.New("engine: MaxConcurrentOps must be at least 1")
	case cfg.StepTimeout < 0 || cfg.MaxRunTime < cfg.StepTimeout:
		return nil, errors.New("engine: StepTimeout must be positive and at most MaxRunTime")
	}
	if cfg.Failpoints == nil {
		fp, err := FailpointsFromEnv()
		if err != nil {
			return nil, fmt.Errorf("engine: %s: %w", FailpointsEnv, err)
		}
		cfg.Failpoints = fp
	}
	base, cancel := context.WithCancel(context.Background())
	e := &Engine{
		cfg: cfg, store: cfg.Store, catalog: cfg.Catalog, log: cfg.Logger, fp: cfg.Failpoints,
		metrics: newMetrics(), tracer: tracing.Tracer(cfg.TracerProvider, "github.com/silo-db/silo/engine"), kinds: map[silo.OperationKind]Kind{}, cancels: map[string]context.CancelCauseFunc{},
		slots: make(chan struct{}, cfg.MaxConcurrentOps), stopping: make(chan struct{}),
		base: base, cancelBase: cancel,
	}
	if cfg.Registry != nil {
		if err := e.metrics.register(cfg.Registry); err != nil {
			return nil, err
		}
	}
	if names := e.fp.Names(); len(names) > 0 {
		e.log.Warn("failpoints armed: this server will fail on purpose", "failpoints", names)
	}
	return e, nil
}

// Register sets how operations of kind are carried out. Call it before
// Start.
func (e *Engine) Register(kind silo.OperationKind, k Kind) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.kinds[kind] = k
	e.metrics.running.WithLabelValues(string(kind)) // reads 0, not absent, while none runs
}

// AddJobs adds a service's jobs to the engine's River client. Call it
// before Start.
func (e *Engine) AddJobs(src JobSource) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sources = append(e.sources, src)
}

// River returns the River client, once the engine has started; nil before.
func (e *Engine) River() *river.Client[pgx.Tx] {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.river
}

// Failpoint fires the failpoint name if it is armed (see FailpointsEnv).
func (e *Engine) Failpoint(ctx context.Context, name string) error {
	return e.fp.Eval(ctx, e.log, name)
}

// Start makes the River client with every registered service's workers and
// starts it, and starts the recovery sweep. ctx bounds the start only.
func (e *Engine) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.river != nil {
		return errors.New("engine: started twice")
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &operationWorker{e: e})
	queues := map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 4}, operationQueue: {MaxWorkers: e.cfg.MaxConcurrentOps}}
	var periodic []*river.PeriodicJob
	for _, src := range e.sources {
		src.AddWorkers(workers)
		maps.Copy(queues, src.Queues())
		periodic = append(periodic, src.PeriodicJobs()...)
	}
	e.id = newClientID()
	if err := e.takeServerLease(ctx); err != nil {
		return err
	}
	client, err := river.NewClient(riverpgxv5.New(e.catalog), &river.Config{
		ID:           e.id,
		Logger:       riverLogger(e.log),
		Workers:      workers,
		Queues:       queues,
		PeriodicJobs: periodic,
		// A worker that frees up fetches the next job within 10 ms: a
		// migration run's tenant jobs take tens of milliseconds each.
		FetchCooldown:     10 * time.Millisecond,
		FetchPollInterval: time.Second,
		JobTimeout:        e.cfg.MaxRunTime,
		// River's own rescue of a job whose server died is the last resort:
		// the recovery sweep finds such work by its free lease within
		// seconds (recover.go).
		RescueStuckJobsAfter: e.cfg.MaxRunTime + 5*time.Minute,
	})
	if err != nil {
		return fmt.Errorf("engine: river client: %w", err)
	}
	if err := client.Start(ctx); err != nil {
		return fmt.Errorf("engine: start river: %w", err)
	}
	e.river = client
	e.inflight.Add(1)
	go func() {
		defer e.inflight.Done()
		e.recoverLoop()
	}()
	return nil
}

// Stop stops taking operations and jobs, lets running steps reach their
// boundary within ctx (an operation cut short keeps its state, and another
// server resumes it once this one's lease is gone), then cancels what
// still runs and waits for it. No goroutine of the engine outlives Stop.
// Stopping twice is stopping once.
func (e *Engine) Stop(ctx context.Context) error {
	e.stopOnce.Do(func() {
		e.mu.Lock()
		close(e.stopping)
		e.mu.Unlock()
		e.stopErr = e.stop(ctx)
	})
	return e.stopErr
}

func (e *Engine) stop(ctx context.Context) error {
	done := make(chan struct{})
	go func() { e.inflight.Wait(); close(done) }()
	var err error
	if c := e.River(); c != nil {
		// River's Stop waits for its running jobs (operation runs among
		// them) within ctx; then they are cancelled.
		if err = c.Stop(ctx); err != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			err = c.StopAndCancel(sctx)
			cancel()
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		e.cancelBase()
		<-done // runs end promptly once their context is cancelled
	}
	e.cancelBase()
	e.mu.Lock()
	if e.lease != nil {
		_ = e.lease.Close(context.WithoutCancel(ctx))
		e.lease = nil
	}
	e.mu.Unlock()
	return err
}

func (e *Engine) isStopping() bool {
	select {
	case <-e.stopping:
		return true
	default:
		return false
	}
}

// Insert records a new operation within tx, the transaction that changes
// the catalog for it (and audits it). Run it with Launch once tx commits;
// if this server dies first, the recovery sweep finds it. The trace of
// ctx's span, if any, is recorded with the operation (as its TraceParam),
// so every run of it, here or on another server, is part of that trace.
func (e *Engine) Insert(ctx context.Context, tx pgx.Tx, n shardmap.NewOperation) error {
	if _, ok := e.kind(n.Kind); !ok {
		return silo.Errorf(silo.EINTERNAL, "engine: no plan registered for %q operations", n.Kind)
	}
	if tp := tracing.Traceparent(ctx); tp != "" {
		n.Params = maps.Clone(n.Params)
		if n.Params == nil {
			n.Params = map[string]any{}
		}
		n.Params[TraceParam] = tp
	}
	_, err := e.store.InsertOperation(ctx, tx, n)
	return err
}

func (e *Engine) kind(k silo.OperationKind) (Kind, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	kind, ok := e.kinds[k]
	return kind, ok
}

// Launch runs an operation in the background, detached from the request
// that started it (with its actor for audit entries), and returns a
// channel closed when this server is done with it: finished, or left for
// recovery.
func (e *Engine) Launch(ctx context.Context, opID string) <-chan struct{} {
	done := make(chan struct{})
	e.mu.Lock()
	if e.isStopping() {
		e.mu.Unlock()
		close(done)
		return done // another server's sweep takes it
	}
	e.inflight.Add(1) // under mu, so that Stop's Wait cannot have begun
	e.mu.Unlock()
	go func() {
		defer e.inflight.Done()
		defer close(done)
		actor := silo.ActorFrom(ctx)
		select {
		case e.slots <- struct{}{}:
			defer func() { <-e.slots }()
		case <-e.stopping:
			return
		}
		if _, err := e.execute(silo.WithActor(e.base, actor), opID); err != nil && !errors.Is(err, errLocked) {
			e.log.ErrorContext(ctx, "operation did not run; it will be resumed", "operation", opID, "err", err)
		}
	}()
	return done
}

// RunNow runs an operation here and now, as recovery would, unless a
// server holds its lease (then it returns the operation as it stands). It
// returns once the run ends: the operation done, or left running to be
// retried.
func (e *Engine) RunNow(ctx context.Context, opID string) (*silo.Operation, error) {
	op, err := e.execute(ctx, opID)
	if errors.Is(err, errLocked) {
		return e.Get(ctx, opID)
	}
	return op, err
}

// SetStepTimeout changes the bound of steps that set none, for runs that
// start from now on.
func (e *Engine) SetStepTimeout(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cfg.StepTimeout = d
}

func (e *Engine) stepTimeout() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg.StepTimeout
}

// Get returns an operation as it stands, with its kind's outcome.
func (e *Engine) Get(ctx context.Context, opID string) (*silo.Operation, error) {
	op, err := e.store.GetOperation(ctx, opID)
	if err != nil {
		return nil, err
	}
	return op, e.describe(ctx, op)
}

func (e *Engine) describe(ctx context.Context, op *silo.Operation) error {
	if k, ok := e.kind(op.Kind); ok && k.Describe != nil {
		return k.Describe(ctx, op)
	}
	return nil
}

// Await waits up to wait for an operation this server launched (done) or
// that runs elsewhere (done nil), then returns it as it stands. A failed
// operation is returned with its error.
func (e *Engine) Await(ctx context.Context, opID string, done <-chan struct{}, wait time.Duration) (*silo.Operation, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var poll <-chan time.Time
	if done == nil {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		poll = t.C
	}
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		case <-poll:
			op, err := e.store.GetOperation(ctx, opID)
			finished = err == nil && op.Done()
		case <-timer.C:
			finished = true
		case <-ctx.Done():
			finished = true
		}
	}
	op, err := e.Get(context.WithoutCancel(ctx), opID)
	if err != nil {
		return nil, err
	}
	if op.State == silo.OpFailed {
		return op, &silo.Error{Code: op.ErrorCode, Message: op.Error}
	}
	return op, nil
}

// Cancel asks a running operation to stop: at its next step boundary it is
// undone, as if that step had failed. An operation past its point of no
// return cannot be cancelled (ECONFLICT); one already done is returned as
// it is.
func (e *Engine) Cancel(ctx context.Context, opID string) (*silo.Operation, error) {
	// A plan without undo steps (a purge) only goes forward: stopping it
	// half done would leave a tenant half erased.
	if cur, err := e.store.GetOperation(ctx, opID); err == nil && !cur.Done() {
		if k, ok := e.kind(cur.Kind); ok {
			params, err := e.store.OperationParams(ctx, opID)
			if err != nil {
				return nil, err
			}
			if pl, err := k.Plan(cur, params); err == nil && len(pl.Undo) == 0 {
				return nil, silo.Errorf(silo.ECONFLICT, "a %s only goes forward: it cannot be cancelled", cur.Kind)
			}
		}
	} else if err != nil {
		return nil, err
	}
	var op *silo.Operation
	params := map[string]any{"operation": opID}
	err := e.store.Mutate(ctx, "operation.cancel", "operation/"+opID, params, func(tx pgx.Tx) error {
		var state string
		var pivoted bool
		err := tx.QueryRow(ctx, `
			SELECT state, pivoted_at IS NOT NULL FROM operations WHERE id = $1::uuid FOR UPDATE`, opID).Scan(&state, &pivoted)
		if errors.Is(err, pgx.ErrNoRows) {
			return silo.Errorf(silo.ENOTFOUND, "operation %q not found", opID)
		}
		if err != nil {
			return shardmap.CatalogError(err, "cancel operation %q", opID)
		}
		switch {
		case state != string(silo.OpRunning):
			return nil
		case pivoted:
			return silo.Errorf(silo.ECONFLICT, "operation %q is past its point of no return; it can only finish", opID)
		}
		_, err = tx.Exec(ctx, `
			UPDATE operations SET cancel_requested_at = coalesce(cancel_requested_at, now()), cancel_requested_by = $2
			WHERE id = $1::uuid`, opID, silo.ActorFrom(ctx).Name)
		return shardmap.CatalogError(err, "cancel operation %q", opID)
	})
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	cancel := e.cancels[opID]
	e.mu.Unlock()
	if cancel != nil {
		// Running here: its step ends now rather than at its boundary.
		cancel(errCancelled)
	}
	if op, err = e.Get(ctx, opID); err != nil {
		return nil, err
	}
	return op, nil
}

// OperationID returns the id of the operation whose step runs with ctx,
// or "".
func OperationID(ctx context.Context) string { return runOf(ctx).id }

type opKey struct{}

// opRun is the operation a step's context runs for, and the run's token.
type opRun struct{ id, token string }

func runOf(ctx context.Context) opRun {
	r, _ := ctx.Value(opKey{}).(opRun)
	return r
}

// WithOperation returns a context for running a step of operation opID
// outside the engine (a test taking an operation through some of its
// steps): MarkPivot and OperationID read it. The engine sets it for every
// step it runs, with its run's token.
func WithOperation(ctx context.Context, opID string) context.Context {
	return context.WithValue(ctx, opKey{}, opRun{id: opID})
}

// MarkPivot records, in tx, that the operation whose pivot step runs with
// ctx has passed its point of no return. A pivot step calls it in the
// transaction that makes its change (a move's flip of the tenant's shard),
// so the change is never committed without the mark. The engine marks the
// pivot too once the step returns, for steps whose change is not in the
// catalog.
//
// The pivot is refused, and tx must roll back, when the run no longer
// holds the operation (another run took it after this one's lease was
// lost), when its undo has begun, or when a cancel was asked for.
func MarkPivot(ctx context.Context, tx pgx.Tx) error {
	r := runOf(ctx)
	if r.id == "" {
		return errors.New("engine: MarkPivot outside an operation's step")
	}
	var ok bool
	err := tx.QueryRow(ctx, `
		UPDATE operations SET pivoted_at = coalesce(pivoted_at, now())
		WHERE id = $1::uuid AND ($2 = '' OR run_token = nullif($2, '')::uuid)
		  AND undo_started_at IS NULL AND (cancel_requested_at IS NULL OR pivoted_at IS NOT NULL)
		RETURNING true`, r.id, r.token).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		return silo.Errorf(silo.ECONFLICT, "operation %q may not pass its point of no return: cancelled, undone, or run by another server", r.id)
	}
	return shardmap.CatalogError(err, "record the pivot of operation %q", r.id)
}
