package provisioner

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// step is one idempotent part of an operation: running it again after a
// crash, or after it succeeded, is safe.
type step struct {
	name string
	run  func(ctx context.Context) error
}

// stepTimeouts are the steps that may take longer than Config.StepTimeout.
var stepTimeouts = map[string]time.Duration{"replicate": moveCopyTimeout, "initial-copy": moveCopyTimeout}

// plan is how an operation is carried out. When a forward step fails, the
// undo steps run; if there are none, or they fail too, the operation stays
// running and its recovery job tries again later.
type plan struct {
	forward []step
	undo    []step
	// finishUndo: once an undo has begun, recovery finishes it rather than
	// trying the forward steps again (a move that failed is abandoned, even
	// if what failed is back by the time it is recovered).
	finishUndo bool
}

// lockClass is the first key of the advisory locks that keep two servers
// from running one operation at once.
const lockClass = 0x51_10_0B

// errLocked means another server is running the operation right now.
var errLocked = errors.New("operation is being run by another server")

// execute runs an operation to its end, if this server can take its lock.
// It returns the operation as it stands afterwards: done, or still running
// when neither its steps nor their undo could finish (the recovery job will
// try again). It returns errLocked when another server holds the lock.
func (p *Provisioner) execute(ctx context.Context, opID string) (*silo.Operation, error) {
	conn, err := p.catalog.Acquire(ctx)
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
	// A lock held by a connection dies with it, so a crashed server's
	// operations are free for the recovery job at once.
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1, hashtext($2))`, lockClass, opID)
	}()

	op, err := p.store.GetOperation(ctx, opID)
	if err != nil || op.Done() {
		return op, err
	}
	params, err := p.store.OperationParams(ctx, opID)
	if err != nil {
		return nil, err
	}
	pl, err := p.plan(op, params)
	if err != nil {
		return p.finish(ctx, op, err)
	}
	r := &recorder{p: p, op: op}
	if cause := undoBegun(op); pl.finishUndo && cause != nil {
		if uerr := r.run(ctx, pl.undo); uerr != nil {
			p.log.Warn("operation's undo did not finish; it will be retried", "operation", op.ID, "kind", op.Kind, "tenant", op.TenantID, "err", uerr)
			return op, nil
		}
		return p.finish(ctx, op, cause)
	}
	ferr := r.run(ctx, pl.forward)
	if ferr == nil {
		return p.finish(ctx, op, nil)
	}
	if len(pl.undo) == 0 {
		p.log.Warn("operation step failed; it will be retried", "operation", op.ID, "kind", op.Kind, "tenant", op.TenantID, "err", ferr)
		return op, nil
	}
	if uerr := r.run(ctx, pl.undo); uerr != nil {
		p.log.Warn("operation failed and its undo did not finish; both will be retried",
			"operation", op.ID, "kind", op.Kind, "tenant", op.TenantID, "err", ferr, "undo_err", uerr)
		return op, nil
	}
	return p.finish(ctx, op, ferr)
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
// an audit entry, and cancels its recovery job.
func (p *Provisioner) finish(ctx context.Context, op *silo.Operation, cause error) (*silo.Operation, error) {
	ctx = context.WithoutCancel(ctx)
	done, err := p.store.FinishOperation(ctx, nil, op.ID, op.Steps, cause)
	if err != nil {
		return nil, err
	}
	outcome := "succeeded"
	if cause != nil {
		outcome = "failed"
		// The request was audited when it was accepted; its failure is too.
		_ = p.store.Mutate(ctx, "tenant."+string(op.Kind), "tenant/"+op.TenantID,
			map[string]any{"operation": op.ID}, func(pgx.Tx) error { return cause })
	}
	p.metrics.operations.WithLabelValues(string(op.Kind), outcome).Inc()
	if op.Kind == silo.OpCreate {
		source := "template"
		if cloned, _ := done.Params["cloned"].(bool); !cloned && done.Params["warmDatabase"] != nil {
			source = "warm_pool"
		}
		p.metrics.provision.WithLabelValues(source, outcome).Observe(time.Since(op.CreatedAt).Seconds())
	}
	if done.RecoveryJobID != 0 {
		// Best effort and off the request's path: a job that still runs
		// finds the operation done.
		p.inflight.Add(1)
		go func() {
			defer p.inflight.Done()
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, _ = p.river.JobCancel(cctx, done.RecoveryJobID)
		}()
	}
	p.log.Info("operation finished", "operation", op.ID, "kind", op.Kind, "tenant", op.TenantID,
		"outcome", outcome, "duration_ms", time.Since(op.CreatedAt).Milliseconds(), "code", silo.ErrorCode(cause))
	if err := p.describeMove(ctx, &done.Operation); err != nil {
		return nil, err
	}
	return &done.Operation, nil
}

// recorder runs steps and records them in the operation, counting attempts
// across resumed runs.
type recorder struct {
	p  *Provisioner
	op *silo.Operation
}

func (r *recorder) run(ctx context.Context, steps []step) error {
	for _, s := range steps {
		i := r.index(s.name)
		st := &r.op.Steps[i]
		// A step is recorded when it ends: most take milliseconds, and a
		// write before each would double the catalog round trips of a create.
		st.State, st.Attempts, st.StartedAt, st.FinishedAt, st.Error = silo.OpRunning, st.Attempts+1, time.Now().UTC(), nil, ""
		timeout := r.p.cfg.StepTimeout
		if t, ok := stepTimeouts[s.name]; ok {
			timeout = t
		}
		sctx, cancel := context.WithTimeout(ctx, timeout)
		err := s.run(sctx)
		if err != nil && sctx.Err() == nil && staleConnection(err) {
			// A pooled connection a restarted shard had ended: steps are
			// idempotent, and the pool opens a fresh one.
			err = s.run(sctx)
		}
		cancel()
		now := time.Now().UTC()
		st.FinishedAt = &now
		if err != nil {
			st.State, st.Error = silo.OpFailed, silo.ErrorMessage(err)
			if silo.ErrorCode(err) == silo.EINTERNAL {
				r.p.log.Error("operation step failed", "operation", r.op.ID, "step", s.name, "err", err)
			}
		} else {
			st.State = silo.OpSucceeded
		}
		// Each save is a commit, and a commit an fsync: a fast operation's
		// steps are written once, when it finishes; a slow or failing one's
		// as they end, so its progress can be followed.
		if err != nil || time.Since(r.op.CreatedAt) > time.Second {
			// A step that succeeded stays succeeded when its record does
			// not save (a slow catalog): the steps are saved again as the
			// operation goes on and when it finishes. Failing it instead
			// would undo a step that happened, such as a create's
			// activation: the tenant active, its database dropped.
			if serr := r.p.store.SaveSteps(context.WithoutCancel(ctx), r.op.ID, r.op.Steps); serr != nil {
				r.p.log.Warn("operation progress not recorded", "operation", r.op.ID, "step", s.name, "err", serr)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
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

// launch runs an operation in the background, detached from the request
// that started it, and returns a channel closed when this server is done
// with it (finished, or left for the recovery job).
func (p *Provisioner) launch(ctx context.Context, opID string) <-chan struct{} {
	done := make(chan struct{})
	p.inflight.Add(1)
	go func() {
		defer p.inflight.Done()
		defer close(done)
		// The request may end; the operation goes on, with the actor of
		// the request for its audit entries.
		ctx := context.WithoutCancel(ctx)
		select {
		case p.slots <- struct{}{}:
			defer func() { <-p.slots }()
		case <-p.stopping:
			return // the recovery job takes it
		}
		ctx, cancel := context.WithTimeout(ctx, moveCopyTimeout+10*time.Minute)
		defer cancel()
		if _, err := p.execute(ctx, opID); err != nil && !errors.Is(err, errLocked) {
			p.log.Error("operation did not run; it will be resumed", "operation", opID, "err", err)
		}
	}()
	return done
}

// await waits up to wait for an operation this server launched (done) or
// that runs elsewhere (done nil), then returns it with its tenant. A failed
// operation is returned with its error.
func (p *Provisioner) await(ctx context.Context, opID string, done <-chan struct{}, wait time.Duration) (Result, error) {
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
			op, err := p.store.GetOperation(ctx, opID)
			finished = err == nil && op.Done()
		case <-timer.C:
			finished = true
		case <-ctx.Done():
			finished = true
		}
	}
	rctx := context.WithoutCancel(ctx)
	op, err := p.store.GetOperation(rctx, opID)
	if err != nil {
		return Result{}, err
	}
	if err := p.describeMove(rctx, op); err != nil {
		return Result{}, err
	}
	res := Result{Operation: op}
	if t, err := p.store.GetTenant(rctx, op.TenantID); err == nil {
		res.Tenant = t
	}
	if op.State == silo.OpFailed {
		return res, &silo.Error{Code: op.ErrorCode, Message: op.Error}
	}
	return res, nil
}
