package engine_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/shardmap"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var seq atomic.Int64

// world is a test's catalog and the steps its plans ran, in order.
type world struct {
	ctx   context.Context
	pool  *pgxpool.Pool
	store *shardmap.Store
	log   *slog.Logger

	mu  sync.Mutex
	ran []string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	pool, store := catalogtest.New(t, log)
	return &world{ctx: silo.WithActor(ctx, silo.Actor{Name: "tester"}), pool: pool, store: store, log: log}
}

func (w *world) record(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ran = append(w.ran, name)
}

func (w *world) steps() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.ran...)
}

// behaviour says what a test plan's steps do: fail names the steps that
// fail (as many times as the count says), block the step that waits for
// its context to end.
type behaviour struct {
	mu    sync.Mutex
	fail  map[string]int
	block string
	// pivotInTx makes the pivot step mark the pivot in a transaction of its
	// own and then fail: a change committed, its step not recorded.
	pivotInTx bool
}

func (b *behaviour) fails(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail[name] > 0 {
		b.fail[name]--
		return true
	}
	return false
}

// engineFor returns an engine whose suspend operations run the test plan:
// steps one, two (the pivot), three; undo steps undo:one, undo:two.
func (w *world) engineFor(t *testing.T, b *behaviour, cfg engine.Config) *engine.Engine {
	t.Helper()
	eng := catalogtest.NewEngine(t, w.pool, w.store, w.log, cfg)
	step := func(name string) engine.Step {
		return engine.Step{Name: name, Run: func(ctx context.Context) error {
			w.record(name)
			if name == b.block {
				<-ctx.Done()
				return ctx.Err()
			}
			if name == "two" && b.pivotInTx {
				if err := pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error { return engine.MarkPivot(ctx, tx) }); err != nil {
					return err
				}
				return silo.Errorf(silo.EUNAVAILABLE, "lost after the pivot committed")
			}
			if b.fails(name) {
				return silo.Errorf(silo.EUNAVAILABLE, "step %s failed on purpose", name)
			}
			return nil
		}}
	}
	eng.Register(silo.OpSuspend, engine.Kind{Plan: func(*silo.Operation, map[string]any) (engine.Plan, error) {
		return engine.Plan{
			Steps: []engine.Step{step("one"), step("two"), step("three")},
			Undo:  []engine.Step{step("undo:one"), step("undo:two")},
			Pivot: "two",
		}, nil
	}})
	return eng
}

// newOperation records a suspend operation, as a request would.
func (w *world) newOperation(t *testing.T, eng *engine.Engine) string {
	t.Helper()
	id := newOperationID()
	tenant := fmt.Sprintf("engine-%d", seq.Add(1))
	require.NoError(t, w.store.Mutate(w.ctx, "tenant.suspend", "tenant/"+tenant, nil, func(tx pgx.Tx) error {
		return eng.Insert(w.ctx, tx, shardmap.NewOperation{ID: id, Kind: silo.OpSuspend, TenantID: tenant})
	}))
	return id
}

// newOperationID returns a random UUID, an operation's id.
func newOperationID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func stepStates(op *silo.Operation) map[string]silo.OperationState {
	m := map[string]silo.OperationState{}
	for _, s := range op.Steps {
		m[s.Name] = s.State
	}
	return m
}

func TestForward(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	eng := w.engineFor(t, &behaviour{}, engine.Config{RecoveryDelay: time.Hour})
	require.NoError(t, eng.Start(w.ctx))
	id := w.newOperation(t, eng)
	op, err := eng.Await(w.ctx, id, eng.Launch(w.ctx, id), time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, op.State)
	require.Equal(t, []string{"one", "two", "three"}, w.steps())
}

// A step that fails before the pivot undoes the operation, and it fails
// with the step's error.
func TestUndoBeforePivot(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	eng := w.engineFor(t, &behaviour{fail: map[string]int{"two": 1}}, engine.Config{RecoveryDelay: time.Hour})
	require.NoError(t, eng.Start(w.ctx))
	id := w.newOperation(t, eng)
	op, err := eng.Await(w.ctx, id, eng.Launch(w.ctx, id), time.Minute)
	require.Error(t, err)
	require.Equal(t, silo.OpFailed, op.State)
	require.Contains(t, op.Error, "step two failed on purpose")
	require.Equal(t, []string{"one", "two", "undo:one", "undo:two"}, w.steps())
}

// Past the pivot, a failed step is never undone: the operation stays
// running and a later run goes on from after the pivot.
func TestNoUndoAfterPivot(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	eng := w.engineFor(t, &behaviour{fail: map[string]int{"three": 1}}, engine.Config{RecoveryDelay: time.Hour})
	require.NoError(t, eng.Start(w.ctx))
	id := w.newOperation(t, eng)
	op, err := eng.Await(w.ctx, id, eng.Launch(w.ctx, id), time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpRunning, op.State, "left to be retried forward")
	require.Equal(t, silo.OpFailed, stepStates(op)["three"])

	op, err = eng.RunNow(w.ctx, id)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, op.State)
	require.Equal(t, []string{"one", "two", "three", "three"}, w.steps(), "no undo; the retry starts after the pivot")
}

// A pivot committed by its step, which then fails before the engine hears
// of it (the catalog flipped, the connection lost): the engine reads the
// pivot from the catalog and does not undo. Without the pivot, the undo
// would run: this is the move that dropped the tenant's only live copy.
func TestPivotCommittedByStepThatFails(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	b := &behaviour{pivotInTx: true}
	eng := w.engineFor(t, b, engine.Config{RecoveryDelay: time.Hour})
	require.NoError(t, eng.Start(w.ctx))
	id := w.newOperation(t, eng)
	op, err := eng.Await(w.ctx, id, eng.Launch(w.ctx, id), time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpRunning, op.State)
	require.Equal(t, []string{"one", "two"}, w.steps(), "no undo step ran")

	op, err = eng.RunNow(w.ctx, id)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, op.State)
	require.Equal(t, []string{"one", "two", "three"}, w.steps())
}

// A failpoint after the pivot step fails the operation there: it is
// retried forward, never undone.
func TestFailpointAfterPivot(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	fp, err := engine.ParseFailpoints("suspend/after-two=error*1")
	require.NoError(t, err)
	eng := w.engineFor(t, &behaviour{}, engine.Config{RecoveryDelay: time.Hour, Failpoints: fp})
	require.NoError(t, eng.Start(w.ctx))
	id := w.newOperation(t, eng)
	op, err := eng.Await(w.ctx, id, eng.Launch(w.ctx, id), time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpRunning, op.State)
	op, err = eng.RunNow(w.ctx, id)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, op.State)
	require.Equal(t, []string{"one", "two", "three"}, w.steps())
}

// An undo that cannot finish is retried until it does; the forward steps
// do not run again.
func TestUndoIsFinished(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	eng := w.engineFor(t, &behaviour{fail: map[string]int{"one": 1, "undo:two": 1}}, engine.Config{RecoveryDelay: time.Hour})
	require.NoError(t, eng.Start(w.ctx))
	id := w.newOperation(t, eng)
	op, err := eng.Await(w.ctx, id, eng.Launch(w.ctx, id), time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpRunning, op.State)
	op, err = eng.RunNow(w.ctx, id)
	require.NoError(t, err)
	require.Equal(t, silo.OpFailed, op.State)
	require.Contains(t, op.Error, "step one failed")
	require.Equal(t, []string{"one", "undo:one", "undo:two", "undo:one", "undo:two"}, w.steps())
}

// A cancel before the pivot undoes the operation at once, even mid-step;
// after the pivot it is refused.
func TestCancel(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	eng := w.engineFor(t, &behaviour{block: "one"}, engine.Config{RecoveryDelay: time.Hour})
	require.NoError(t, eng.Start(w.ctx))
	id := w.newOperation(t, eng)
	done := eng.Launch(w.ctx, id)
	require.Eventually(t, func() bool { return len(w.steps()) == 1 }, 10*time.Second, 10*time.Millisecond)
	_, err := eng.Cancel(silo.WithActor(w.ctx, silo.Actor{Name: "ops"}), id)
	require.NoError(t, err)
	op, err := eng.Await(w.ctx, id, done, time.Minute)
	require.Error(t, err)
	require.Equal(t, silo.OpFailed, op.State)
	require.Contains(t, op.Error, "cancelled by ops")
	require.Equal(t, []string{"one", "undo:one", "undo:two"}, w.steps())

	w2 := newWorld(t)
	eng2 := w2.engineFor(t, &behaviour{fail: map[string]int{"three": 1}}, engine.Config{RecoveryDelay: time.Hour})
	require.NoError(t, eng2.Start(w2.ctx))
	id2 := w2.newOperation(t, eng2)
	_, err = eng2.Await(w2.ctx, id2, eng2.Launch(w2.ctx, id2), time.Minute)
	require.NoError(t, err)
	_, err = eng2.Cancel(w2.ctx, id2)
	require.Equal(t, silo.ECONFLICT, silo.ErrorCode(err), "past the pivot")
}

// An operation whose server died (its lease free) is resumed by another
// server's recovery sweep within seconds; one whose server lives is not
// touched.
func TestRecovery(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	eng := w.engineFor(t, &behaviour{}, engine.Config{RecoveryDelay: time.Second})
	require.NoError(t, eng.Start(w.ctx))

	// A live server's lease: the sweep leaves the operation alone.
	held := w.newOperation(t, eng)
	conn, err := w.pool.Acquire(w.ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(w.ctx, `SELECT pg_advisory_lock($1, hashtext($2))`, 0x51_10_0B, held)
	require.NoError(t, err)
	op, err := eng.RunNow(w.ctx, held)
	require.NoError(t, err)
	require.Equal(t, silo.OpRunning, op.State, "another server holds it")

	// A dead server's operation: recorded, never run.
	orphan := w.newOperation(t, eng)
	start := time.Now()
	require.Eventually(t, func() bool {
		op, err := eng.Get(w.ctx, orphan)
		return err == nil && op.State == silo.OpSucceeded
	}, 20*time.Second, 50*time.Millisecond)
	t.Logf("resumed in %s", time.Since(start))
	op, err = eng.Get(w.ctx, held)
	require.NoError(t, err)
	require.Equal(t, silo.OpRunning, op.State)
	require.Equal(t, []string{"one", "two", "three"}, w.steps(), "only the orphan ran")

	// Its server gone, the held one is resumed too.
	require.NoError(t, conn.Conn().Close(w.ctx))
	require.Eventually(t, func() bool {
		op, err := eng.Get(w.ctx, held)
		return err == nil && op.State == silo.OpSucceeded
	}, 20*time.Second, 50*time.Millisecond)
}

// Stop lets a running step end at once (its context cancelled once the
// grace is over), leaves the operation running with the step not failed,
// and leaks no goroutine; another server finishes it. Not parallel: it
// counts goroutines.
func TestStop(t *testing.T) {
	w := newWorld(t)
	before := goleak.IgnoreCurrent()
	b := &behaviour{block: "two"}
	eng := w.engineFor(t, b, engine.Config{RecoveryDelay: time.Second})
	require.NoError(t, eng.Start(w.ctx))
	id := w.newOperation(t, eng)
	eng.Launch(w.ctx, id)
	require.Eventually(t, func() bool { return len(w.steps()) == 2 }, 10*time.Second, 10*time.Millisecond)
	sctx, cancel := context.WithTimeout(w.ctx, 2*time.Second)
	defer cancel()
	start := time.Now()
	err := eng.Stop(sctx)
	require.True(t, err == nil || errors.Is(err, context.DeadlineExceeded), "%v", err)
	require.Less(t, time.Since(start), 10*time.Second)
	op, err := eng.Get(w.ctx, id)
	require.NoError(t, err)
	require.Equal(t, silo.OpRunning, op.State)
	require.Equal(t, silo.OpRunning, stepStates(op)["two"], "cut short, not failed")
	goleak.VerifyNone(t, before)

	b.mu.Lock()
	b.block = ""
	b.mu.Unlock()
	other := w.engineFor(t, b, engine.Config{RecoveryDelay: time.Second})
	require.NoError(t, other.Start(w.ctx))
	require.Eventually(t, func() bool {
		op, err := other.Get(w.ctx, id)
		return err == nil && op.State == silo.OpSucceeded
	}, 20*time.Second, 50*time.Millisecond)
	require.Equal(t, []string{"one", "two", "one", "two", "three"}, w.steps())
}

func TestParseFailpoints(t *testing.T) {
	fp, err := engine.ParseFailpoints("move/after-flip=kill, create/before-role=error*2,x=sleep(5ms)")
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"move/after-flip", "create/before-role", "x"}, fp.Names())
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	ctx := context.Background()
	require.ErrorIs(t, fp.Eval(ctx, log, "create/before-role"), engine.ErrFailpoint)
	require.ErrorIs(t, fp.Eval(ctx, log, "create/before-role"), engine.ErrFailpoint)
	require.NoError(t, fp.Eval(ctx, log, "create/before-role"), "fired twice only")
	require.NoError(t, fp.Eval(ctx, log, "x"))
	require.NoError(t, fp.Eval(ctx, log, "unarmed"))
	for _, bad := range []string{"noaction", "a=explode", "a=error*0", "a=sleep(forever)", "=kill"} {
		_, err := engine.ParseFailpoints(bad)
		require.Error(t, err, bad)
	}
	var none *engine.Failpoints
	require.NoError(t, none.Eval(ctx, log, "anything"))
}

// A run whose lease is lost mid-step (its catalog connection cut) stops at
// once without failing the step; the next run takes the operation over,
// and the stale run can neither undo nor finish it.
func TestLeaseLost(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	b := &behaviour{block: "one"}
	eng := w.engineFor(t, b, engine.Config{RecoveryDelay: time.Hour})
	require.NoError(t, eng.Start(w.ctx))
	id := w.newOperation(t, eng)
	done := eng.Launch(w.ctx, id)
	require.Eventually(t, func() bool { return len(w.steps()) == 1 }, 10*time.Second, 10*time.Millisecond)
	var n int
	require.NoError(t, w.pool.QueryRow(w.ctx, `
		SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l
		WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid::bigint = $1
		  AND l.objid::bigint = (hashtext($2)::bigint & 4294967295)`, 0x51_10_0B, id).Scan(&n))
	require.Equal(t, 1, n, "the lease's session")
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the run went on without its lease")
	}
	op, err := eng.Get(w.ctx, id)
	require.NoError(t, err)
	require.Equal(t, silo.OpRunning, op.State, "stopped, not failed")
	b.mu.Lock()
	b.block = ""
	b.mu.Unlock()
	op, err = eng.RunNow(w.ctx, id)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, op.State)
	require.Equal(t, []string{"one", "one", "two", "three"}, w.steps(), "no undo; taken over from the start")
}

// An undo cut short (the server stopping mid-undo) is resumed as an undo:
// it was recorded before its first step, and a resumed run never turns it
// back into the forward steps.
func TestUndoSurvivesStop(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	b := &behaviour{fail: map[string]int{"two": 1}, block: "undo:two"}
	eng := w.engineFor(t, b, engine.Config{RecoveryDelay: time.Hour})
	require.NoError(t, eng.Start(w.ctx))
	id := w.newOperation(t, eng)
	eng.Launch(w.ctx, id)
	require.Eventually(t, func() bool { return len(w.steps()) == 4 }, 10*time.Second, 10*time.Millisecond)
	sctx, cancel := context.WithTimeout(w.ctx, time.Second)
	defer cancel()
	_ = eng.Stop(sctx)
	op, err := eng.Get(w.ctx, id)
	require.NoError(t, err)
	require.Equal(t, silo.OpRunning, op.State)

	b.mu.Lock()
	b.block = ""
	b.mu.Unlock()
	other := w.engineFor(t, b, engine.Config{RecoveryDelay: time.Hour})
	require.NoError(t, other.Start(w.ctx))
	op, err = other.RunNow(w.ctx, id)
	require.NoError(t, err)
	require.Equal(t, silo.OpFailed, op.State)
	require.Equal(t, []string{"one", "two", "undo:one", "undo:two", "undo:one", "undo:two"}, w.steps(),
		"resumed as an undo; three never ran")
}

// A plan without undo steps (a purge) only goes forward: a cancel is
// refused.
func TestCancelForwardOnly(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	eng := catalogtest.NewEngine(t, w.pool, w.store, w.log, engine.Config{RecoveryDelay: time.Hour})
	eng.Register(silo.OpSuspend, engine.Kind{Plan: func(*silo.Operation, map[string]any) (engine.Plan, error) {
		return engine.Plan{Steps: []engine.Step{{Name: "only", Run: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}}}, nil
	}})
	require.NoError(t, eng.Start(w.ctx))
	id := w.newOperation(t, eng)
	_, err := eng.Cancel(w.ctx, id)
	require.Equal(t, silo.ECONFLICT, silo.ErrorCode(err), "%v", err)
}

// silo_operations_running counts the operations this server runs, by
// kind: 0 before, 1 while a step runs, 0 once the operation has ended.
func TestOperationsRunningMetric(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	reg := prometheus.NewRegistry()
	eng := w.engineFor(t, &behaviour{block: "one"}, engine.Config{RecoveryDelay: time.Hour, Registry: reg})
	require.NoError(t, eng.Start(w.ctx))
	// running reads the gauge of suspend operations; -1 when it is absent.
	// It fails no test: require.Eventually calls it on a goroutine of its
	// own.
	running := func() float64 {
		families, err := reg.Gather()
		if err != nil {
			return -1
		}
		for _, f := range families {
			if f.GetName() != "silo_operations_running" {
				continue
			}
			for _, m := range f.GetMetric() {
				if l := m.GetLabel(); len(l) == 1 && l[0].GetName() == "kind" && l[0].GetValue() == string(silo.OpSuspend) {
					return m.GetGauge().GetValue()
				}
			}
		}
		return -1
	}
	require.Zero(t, running(), "registered kinds read 0 before any runs")

	id := w.newOperation(t, eng)
	done := eng.Launch(w.ctx, id)
	require.Eventually(t, func() bool { return len(w.steps()) == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, 1.0, running())
	_, err := eng.Cancel(w.ctx, id)
	require.NoError(t, err)
	op, err := eng.Await(w.ctx, id, done, time.Minute)
	require.Error(t, err)
	require.Equal(t, silo.OpFailed, op.State)
	require.Eventually(t, func() bool { return running() == 0 }, 10*time.Second, 10*time.Millisecond,
		"the ended operation is no longer counted")
}
