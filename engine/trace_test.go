package engine_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/shardmap"
)

// An operation's runs are in the trace of the request that recorded it,
// on whichever server runs them: a run that fails a step past the pivot
// and is left running, then the run another server resumes, each a child
// of the request, each step a child of its run.
func TestTraceOperation(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	recorder := func() (*tracetest.SpanRecorder, *sdktrace.TracerProvider) {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		return rec, tp
	}
	recA, tpA := recorder()
	recB, tpB := recorder()
	b := &behaviour{fail: map[string]int{"three": 1}}
	engA := w.engineFor(t, b, engine.Config{RecoveryDelay: time.Hour, TracerProvider: tpA})
	require.NoError(t, engA.Start(w.ctx))
	engB := w.engineFor(t, b, engine.Config{RecoveryDelay: time.Hour, TracerProvider: tpB})
	require.NoError(t, engB.Start(w.ctx))

	ctx, request := tpA.Tracer("test").Start(w.ctx, "POST /v1/tenants/:id/suspend")
	id := w.newOperationCtx(t, ctx, engA)
	params, err := w.store.OperationParams(w.ctx, id)
	require.NoError(t, err)
	require.Regexp(t, `^00-`+request.SpanContext().TraceID().String()+`-`+request.SpanContext().SpanID().String()+`-01$`, params[engine.TraceParam])
	op, err := engA.Await(ctx, id, engA.Launch(ctx, id), time.Minute)
	request.End()
	require.NoError(t, err)
	require.Equal(t, silo.OpRunning, op.State, "left to be retried forward")

	op, err = engB.RunNow(w.ctx, id) // no span in ctx: the recorded one is the parent
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, op.State)

	attrs := func(s sdktrace.ReadOnlySpan) map[attribute.Key]string {
		m := map[attribute.Key]string{}
		for _, kv := range s.Attributes() {
			m[kv.Key] = kv.Value.Emit()
		}
		return m
	}
	check := func(rec *tracetest.SpanRecorder, outcome, resumed string, steps map[string]string) {
		t.Helper()
		var run sdktrace.ReadOnlySpan
		got := map[string]string{}
		for _, s := range rec.Ended() {
			if s.Name() == "operation suspend" {
				run = s
			}
		}
		require.NotNil(t, run)
		require.Equal(t, request.SpanContext().TraceID(), run.SpanContext().TraceID())
		require.Equal(t, request.SpanContext().SpanID(), run.Parent().SpanID())
		a := attrs(run)
		require.Equal(t, id, a["silo.operation.id"])
		require.Equal(t, op.TenantID, a["silo.tenant.id"])
		require.Equal(t, outcome, a["silo.outcome"])
		require.Equal(t, resumed, a["silo.operation.resumed"])
		for _, s := range rec.Ended() {
			if s.Parent().SpanID() == run.SpanContext().SpanID() {
				got[s.Name()] = attrs(s)["silo.outcome"]
				if got[s.Name()] == "failed" {
					require.Equal(t, codes.Error, s.Status().Code)
					require.Contains(t, s.Status().Description, "step three failed on purpose")
				}
			}
		}
		require.Equal(t, steps, got)
	}
	check(recA, "running", "false", map[string]string{"step one": "succeeded", "step two": "succeeded", "step three": "failed"})
	check(recB, "succeeded", "true", map[string]string{"step three": "succeeded"})
}

// newOperationCtx is newOperation with the caller's context.
func (w *world) newOperationCtx(t *testing.T, ctx context.Context, eng *engine.Engine) string {
	t.Helper()
	id := newOperationID()
	require.NoError(t, w.store.Mutate(ctx, "tenant.suspend", "tenant/traced", nil, func(tx pgx.Tx) error {
		return eng.Insert(ctx, tx, shardmap.NewOperation{ID: id, Kind: silo.OpSuspend, TenantID: "traced"})
	}))
	return id
}
