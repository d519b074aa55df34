package engine

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// Step is one idempotent part of an operation: running it again after a
// crash, or after it succeeded, is safe.
type Step struct {
	Name string
	Run  func(ctx context.Context) error
	// Timeout bounds the step; 0 takes Config.StepTimeout.
	Timeout time.Duration
}

// Plan is how an operation is carried out.
//
// Steps run in order. When one fails before the pivot has committed, the
// Undo steps run and the operation fails; an undo that cannot finish is
// retried until it does (an undo once begun is always finished). Once the
// Pivot step has committed, the operation only goes forward: a failed
// step is retried, by this server or another, until the operation
// succeeds; its undo never runs. A plan without Undo steps only goes
// forward.
type Plan struct {
	Steps []Step
	Undo  []Step
	// Pivot names the step after which undoing is wrong: the one that
	// makes the change users see (a tenant activated, a move's flip). Its
	// commit is recorded in the catalog (MarkPivot, in the step's own
	// transaction where it can be), and a resumed run starts after it.
	Pivot string
}

// lockClass is the first key of the session advisory locks (leases) that
// keep two servers from running one operation at once; a lease dies with
// its server's catalog connection.
const lockClass = 0x51_10_0B

// errLocked means another server is running the operation right now.
var errLocked = errors.New("operation is being run by another server")

// errInterrupted means the run stopped at a boundary, the operation still
// running: this server is stopping, or the run's time is up.
var errInterrupted = errors.New("interrupted")

// errCancelled is the cause of a run's context when the operation is
// cancelled.
var errCancelled = errors.New("operation cancelled")

// errPivotUnknown means the pivot step ran but its commit could not be
// recorded or read: the operation must not be undone.
var errPivotUnknown = errors.New("pivot not recorded")

// errLeaseLost is the cause of a run's context when its lease is gone (its
// catalog connection cut): another server may have the operation now, so
// the run stops at once, changing nothing more.
var errLeaseLost = errors.New("the operation's lease on the catalog was lost")

// runState is what a run reads of its operation besides its record.
type runState struct {
	params      map[string]any
	pivoted     bool
	undoStarted bool
	cancelledBy string // "" unless a cancel was asked for
}

func (e *Engine) runState(ctx context.Context, opID string) (runState, error) {
	var st runState
	var cancelled bool
	err := e.catalog.QueryRow(ctx, `
		SELECT params, pivoted_at IS NOT NULL, undo_started_at IS NOT NULL,
		       cancel_requested_at IS NOT NULL, cancel_requested_by
		FROM operations WHERE id = $1::uuid`, opID).Scan(&st.params, &st.pivoted, &st.undoStarted, &cancelled, &st.cancelledBy)
	if err != nil {
		return st, shardmap.CatalogError(err, "read operation %q", opID)
	}
	if cancelled && st.cancelledBy == "" {
		st.cancelledBy = "someone"
	}
	if !cancelled {
		st.cancelledBy = ""
	}
	return st, nil
}

// execute runs an operation to its end, if this server can take its
// lease. It returns the operation as it stands afterwards: done, or still
// running when it must be tried again (a step failed after the pivot, an
// undo did not finish, the server is stopping, the lease was lost). It
// returns errLocked when another server holds the lease.
//
// The run holds the lease (a session lock) on a connection of its own,
// which a watchdog pings: should it be cut, the run stops at once. And the
// run writes a fencing token into the operation when it takes it: the
// pivot, the start of the undo, the steps' record and the end are written
// only while the token is this run's, so a run that lost its lease while
// it went on cannot undo what another run pivoted, or finish it.
func (e *Engine) execute(ctx context.Context, opID string) (res *silo.Operation, err error) {
	conn, err := e.catalog.Acquire(ctx)
	if err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable")
	}
	defer conn.Release()
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, hashtext($2))`, lockClass, opID).Scan(&locked); err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable")
	}
	if !locked {
		return nil, errLocked
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1, hashtext($2))`, lockClass, opID); err != nil {
			conn.Conn().Close(uctx) // the lease must not outlive the run
		}
	}()

	op, err := e.store.GetOperation(ctx, opID)
	if err != nil || op.Done() {
		return op, err
	}
	running := e.metrics.running.WithLabelValues(string(op.Kind))
	running.Inc()
	defer running.Dec()
	// The lease is taken: the sweep measures a lost server from here, and
	// the token fences off any earlier run that lost it.
	token := newToken()
	if _, err := conn.Exec(ctx, `UPDATE operations SET updated_at = now(), run_token = $2::uuid WHERE id = $1::uuid`, opID, token); err != nil {
		return nil, shardmap.CatalogError(err, "take over operation %q", opID)
	}
	st, err := e.runState(ctx, opID)
	if err != nil {
		return nil, err
	}
	ctx, span := e.startRun(ctx, op, st)
	defer func() { endRun(span, res, err) }()
	kind, ok := e.kind(op.Kind)
	if !ok {
		return nil, silo.Errorf(silo.EINTERNAL, "engine: no plan registered for %q operations", op.Kind)
	}
	ctx = context.WithValue(ctx, opKey{}, opRun{id: opID, token: token})
	pl, err := kind.Plan(op, st.params)
	if err != nil {
		if st.pivoted {
			e.log.ErrorContext(ctx, "operation past its pivot cannot be planned; it will be retried", "operation", op.ID, "err", err)
			return op, nil
		}
		return e.finish(ctx, op, kind, st.params, err)
	}

	// hard ends with the server's hard stop or the lease's loss; the
	// forward run's context also ends with a cancel, which the undo that
	// follows must outlive.
	hard, cancelHard := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelHard(nil)
	stopHard := context.AfterFunc(e.base, func() { cancelHard(errInterrupted) })
	defer stopHard()
	run, cancel := context.WithCancelCause(hard)
	run, cancelRun := context.WithTimeout(run, e.cfg.MaxRunTime)
	defer cancelRun()
	e.mu.Lock()
	e.cancels[opID] = cancel
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.cancels, opID)
		e.mu.Unlock()
		cancel(nil)
	}()
	stopWatch := e.watchLease(conn, func() { cancelHard(errLeaseLost) })
	defer stopWatch()

	r := &recorder{e: e, op: op, token: token}
	undo := func(cause error) (*silo.Operation, error) {
		// Recorded before the first undo step, in a statement that the
		// pivot's own waits for (the row's lock): an undo begins only if
		// the pivot has not committed, and once begun it is finished,
		// after any crash, never turned back into the forward steps.
		var begun bool
		err := e.catalog.QueryRow(hard, `
			UPDATE operations SET undo_started_at = coalesce(undo_started_at, now()), updated_at = now()
			WHERE id = $1::uuid AND run_token = $2::uuid AND pivoted_at IS NULL
			RETURNING true`, opID, token).Scan(&begun)
		if errors.Is(err, pgx.ErrNoRows) {
			e.log.WarnContext(hard, "operation not undone: its pivot committed, or another run holds it", "operation", op.ID, "kind", op.Kind, "err", cause)
			return op, nil
		}
		if err != nil {
			e.log.WarnContext(hard, "operation's undo could not begin; it will be retried", "operation", op.ID, "kind", op.Kind, "err", err)
			return op, nil
		}
		r.undoing = true
		if uerr := r.run(hard, pl.Undo, ""); uerr != nil {
			e.log.WarnContext(hard, "operation's undo did not finish; it will be retried",
				"operation", op.ID, "kind", op.Kind, "tenant", op.TenantID, "err", cause, "undo_err", uerr)
			return op, nil
		}
		return e.finish(hard, op, kind, st.params, cause)
	}
	if cause := undoBegun(op); (cause != nil || st.undoStarted) && !st.pivoted {
		if cause == nil {
			cause = silo.Errorf(silo.EUNAVAILABLE, "the %s was undone", op.Kind)
		}
		return undo(cause)
	}
	if st.cancelledBy != "" && !st.pivoted && len(pl.Undo) > 0 {
		return undo(silo.Errorf(silo.ECONFLICT, "the %s was cancelled by %s", op.Kind, st.cancelledBy))
	}
	steps := pl.Steps
	if st.pivoted {
		steps = afterPivot(pl)
	}
	ferr := r.run(run, steps, pl.Pivot)
	switch {
	case ferr == nil:
		return e.finish(hard, op, kind, st.params, nil)
	case errors.Is(ferr, errInterrupted):
		e.log.InfoContext(hard, "operation interrupted at a step boundary; it will be resumed", "operation", op.ID, "kind", op.Kind,
			"cause", fmt.Sprint(context.Cause(hard)))
		return op, nil
	}
	pivoted := st.pivoted
	if !pivoted && !errors.Is(ferr, errPivotUnknown) {
		rst, err := e.runState(hard, opID)
		if err != nil {
			ferr = errors.Join(ferr, errPivotUnknown) // cannot tell: never undo blind
		}
		pivoted = rst.pivoted
	}
	if pivoted || errors.Is(ferr, errPivotUnknown) || len(pl.Undo) == 0 {
		e.metrics.forwardRetries.WithLabelValues(string(op.Kind)).Inc()
		e.log.WarnContext(hard, "operation step failed; it will be retried forward", "operation", op.ID, "kind", op.Kind,
			"tenant", op.TenantID, "pivoted", pivoted, "err", ferr)
		return op, nil
	}
	if errors.Is(context.Cause(run), errCancelled) {
		by, _ := e.runState(hard, opID)
		ferr = silo.Errorf(silo.ECONFLICT, "the %s was cancelled by %s", op.Kind, cmpOr(by.cancelledBy, "someone"))
	}
	return undo(ferr)
}

// watchLease pings the run's lease connection until the returned function
// is called; when a ping fails, it calls lost. The connection is the
// lease's alone while the run goes on.
func (e *Engine) watchLease(conn *pgxpool.Conn, lost func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		// Well within RecoveryDelay: another server may take the operation
		// that long after the lease is gone.
		t := time.NewTicker(min(e.cfg.RecoveryDelay/2, time.Second))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), min(e.cfg.RecoveryDelay, 5*time.Second))
			err := conn.Ping(ctx)
			cancel()
			if err != nil {
				select {
				case <-done: // the run ended meanwhile
				default:
					e.log.Warn("operation's lease lost; the run stops", "err", err)
					lost()
				}
				return
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// newToken returns a random UUID, a run's fencing token.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// afterPivot returns the steps after the plan's pivot.
func afterPivot(pl Plan) []Step {
	for i, s := range pl.Steps {
		if s.Name == pl.Pivot {
			return pl.Steps[i+1:]
		}
	}
	return pl.Steps
}

// staleConnection tells errors of a connection the server ended (its
// restart, an administrator), which a new connection does not have.
func staleConnection(err error) bool {
	switch shardmap.SQLState(err) {
	case "57P01", "57P02", "57P03": // admin_shutdown, crash_shutdown, cannot_connect_now
		return true
	}
	return false
}

// undoBegun returns why an operation is being undone (its failed forward
// step) when an undo step has run, and nil otherwise.
func undoBegun(op *silo.Operation) error {
	begun := false
	var failed *silo.OperationStep
	for i, s := range op.Steps {
		if strings.HasPrefix(s.Name, "undo:") && s.Attempts > 0 {
			begun = true
		} else if s.State == silo.OpFailed && failed == nil {
			failed = &op.Steps[i]
		}
	}
	if !begun {
		return nil
	}
	if failed == nil {
		return silo.Errorf(silo.EUNAVAILABLE, "the %s was undone", op.Kind)
	}
	return silo.Errorf(silo.EUNAVAILABLE, "step %s failed, so the %s was undone: %s", failed.Name, op.Kind, failed.Error)
}

// finish records the end of an operation, its metrics and, when it failed,
// an audit entry.
func (e *Engine) finish(ctx context.Context, op *silo.Operation, kind Kind, params map[string]any, cause error) (*silo.Operation, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	done, err := e.store.FinishOperation(ctx, nil, op.ID, runOf(ctx).token, op.Steps, cause)
	if silo.ErrorCode(err) == silo.ECONFLICT {
		e.log.WarnContext(ctx, "operation not finished by this run: done already, or held by another", "operation", op.ID)
		return e.Get(ctx, op.ID)
	}
	if err != nil {
		return nil, err
	}
	outcome := "succeeded"
	if cause != nil {
		outcome = "failed"
		// The request was audited when it was accepted; its failure is too.
		_ = e.store.Mutate(ctx, "tenant."+string(op.Kind), "tenant/"+op.TenantID,
			map[string]any{"operation": op.ID}, func(pgx.Tx) error { return cause })
	}
	e.metrics.operations.WithLabelValues(string(op.Kind), outcome).Inc()
	if kind.Finished != nil {
		kind.Finished(ctx, &done.Operation, done.Params, cause)
	}
	if done.RecoveryJobID != 0 {
		// An operation recorded by an earlier Silo has a recovery job of
		// its own; a job that still runs finds the operation done.
		if c := e.River(); c != nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, _ = c.JobCancel(cctx, done.RecoveryJobID)
			cancel()
		}
	}
	e.log.InfoContext(ctx, "operation finished", "operation", op.ID, "kind", op.Kind, "tenant", op.TenantID,
		"outcome", outcome, "duration_ms", time.Since(op.CreatedAt).Milliseconds(), "code", silo.ErrorCode(cause))
	if err := e.describe(ctx, &done.Operation); err != nil {
		return nil, err
	}
	return &done.Operation, nil
}

// recorder runs steps and records them in the operation, counting attempts
// across resumed runs.
type recorder struct {
	e       *Engine
	op      *silo.Operation
	token   string // the run's fencing token
	undoing bool   // undo steps: each recorded as it ends
}

// run runs steps in order. It stops with errInterrupted at a boundary when
// the server is stopping, and with the cause when the operation was
// cancelled. pivot names the plan's pivot step, marked once it succeeds.
func (r *recorder) run(ctx context.Context, steps []Step, pivot string) error {
	e := r.e
	for _, s := range steps {
		if e.isStopping() {
			return errInterrupted
		}
		if cause := context.Cause(ctx); cause != nil {
			if errors.Is(cause, errCancelled) {
				return cause
			}
			return errInterrupted // the run's time is up, or the server's
		}
		i := r.index(s.Name)
		st := &r.op.Steps[i]
		// A step is recorded when it ends: most take milliseconds, and a
		// write before each would double the catalog round trips of a create.
		st.State, st.Attempts, st.StartedAt, st.FinishedAt, st.Error = silo.OpRunning, st.Attempts+1, time.Now().UTC(), nil, ""
		timeout := cmpDuration(s.Timeout, e.stepTimeout())
		stepCtx, span := r.startStep(ctx, s.Name, st.Attempts)
		err := e.Failpoint(stepCtx, string(r.op.Kind)+"/before-"+s.Name)
		if err == nil {
			sctx, cancel := context.WithTimeout(stepCtx, timeout)
			err = s.Run(sctx)
			if err != nil && sctx.Err() == nil && staleConnection(err) {
				// A pooled connection a restarted shard had ended: steps are
				// idempotent, and the pool opens a fresh one.
				err = s.Run(sctx)
			}
			cancel()
		}
		if err == nil && s.Name == pivot {
			if err = r.markPivot(stepCtx); err != nil {
				err = errors.Join(err, errPivotUnknown)
			}
		}
		if err == nil {
			err = e.Failpoint(stepCtx, string(r.op.Kind)+"/after-"+s.Name)
		}
		if err != nil && (e.isStopping() || errors.Is(context.Cause(ctx), errLeaseLost) ||
			(ctx.Err() != nil && !errors.Is(context.Cause(ctx), errCancelled))) {
			// Cut short by this server's end, not failed: the step runs
			// again when the operation is resumed.
			st.State, st.FinishedAt = silo.OpRunning, nil
			endStep(span, err, true)
			r.save(ctx, s.Name)
			return errInterrupted
		}
		now := time.Now().UTC()
		st.FinishedAt = &now
		if err != nil {
			st.State, st.Error = silo.OpFailed, silo.ErrorMessage(err)
			if silo.ErrorCode(err) == silo.EINTERNAL {
				e.log.ErrorContext(stepCtx, "operation step failed", "operation", r.op.ID, "step", s.Name, "err", err)
			}
		} else {
			st.State = silo.OpSucceeded
		}
		endStep(span, err, false)
		e.metrics.steps.WithLabelValues(string(r.op.Kind), s.Name, stepOutcome(err)).Inc()
		// Each save is a commit, and a commit an fsync: a fast operation's
		// steps are written once, when it finishes; a slow or failing one's
		// as they end, so its progress can be followed.
		if err != nil || r.undoing || time.Since(r.op.CreatedAt) > time.Second {
			r.save(ctx, s.Name)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// save records the steps so far. A step that succeeded stays succeeded
// when its record does not save (a slow catalog): the steps are saved
// again as the operation goes on and when it finishes.
func (r *recorder) save(ctx context.Context, step string) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := r.e.store.SaveSteps(sctx, r.op.ID, r.token, r.op.Steps); err != nil {
		r.e.log.WarnContext(ctx, "operation progress not recorded", "operation", r.op.ID, "step", step, "err", err)
	}
}

func (r *recorder) markPivot(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return pgx.BeginFunc(ctx, r.e.catalog, func(tx pgx.Tx) error { return MarkPivot(ctx, tx) })
}

func stepOutcome(err error) string {
	if err != nil {
		return "failed"
	}
	return "succeeded"
}

func cmpDuration(a, b time.Duration) time.Duration {
	if a > 0 {
		return a
	}
	return b
}

func (r *recorder) index(name string) int {
	for i, s := range r.op.Steps {
		if s.Name == name {
			return i
		}
	}
	r.op.Steps = append(r.op.Steps, silo.OperationStep{Name: name})
	return len(r.op.Steps) - 1
}
