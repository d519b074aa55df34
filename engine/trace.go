package engine

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/tracing"
)

// Span attributes of the engine's own.
const (
	attrResumed = attribute.Key("silo.operation.resumed")
	attrStep    = attribute.Key("silo.step.name")
	attrAttempt = attribute.Key("silo.step.attempt")
	attrUndo    = attribute.Key("silo.step.undo")
)

// startRun starts the span of a run of op, "operation KIND", a child of
// the request that started the operation (its TraceParam) unless ctx has a
// span of its own.
func (e *Engine) startRun(ctx context.Context, op *silo.Operation, st runState) (context.Context, trace.Span) {
	tp, _ := st.params[TraceParam].(string)
	resumed := st.pivoted || st.undoStarted
	for _, s := range op.Steps {
		resumed = resumed || s.Attempts > 0
	}
	return e.tracer.Start(tracing.WithTraceparent(ctx, tp), "operation "+string(op.Kind), trace.WithAttributes(
		tracing.OperationID.String(op.ID), tracing.OperationKind.String(string(op.Kind)),
		tracing.TenantID.String(op.TenantID), attrResumed.Bool(resumed)))
}

// endRun ends a run's span with how the run left the operation: succeeded,
// failed, or running still (to be resumed or retried).
func endRun(span trace.Span, op *silo.Operation, err error) {
	defer span.End()
	switch {
	case err != nil:
		span.SetAttributes(tracing.Outcome.String("error"), tracing.ErrorCode.String(silo.ErrorCode(err)))
		span.SetStatus(codes.Error, silo.ErrorMessage(err))
	case op == nil:
	case op.State == silo.OpFailed:
		span.SetAttributes(tracing.Outcome.String("failed"), tracing.ErrorCode.String(op.ErrorCode))
		span.SetStatus(codes.Error, op.Error)
	case op.State == silo.OpSucceeded:
		span.SetAttributes(tracing.Outcome.String("succeeded"))
	default:
		span.SetAttributes(tracing.Outcome.String("running"))
	}
}

// startStep starts the span of one attempt of a step, "step NAME".
func (r *recorder) startStep(ctx context.Context, name string, attempt int) (context.Context, trace.Span) {
	return r.e.tracer.Start(ctx, "step "+name, trace.WithAttributes(
		tracing.OperationID.String(r.op.ID), tracing.OperationKind.String(string(r.op.Kind)),
		attrStep.String(name), attrAttempt.Int(attempt), attrUndo.Bool(r.undoing)))
}

// endStep ends a step's span; interrupted says the step was cut short by
// the server's end rather than failed.
func endStep(span trace.Span, err error, interrupted bool) {
	defer span.End()
	switch {
	case interrupted:
		span.SetAttributes(tracing.Outcome.String("interrupted"))
	case err != nil:
		span.SetAttributes(tracing.Outcome.String("failed"), tracing.ErrorCode.String(silo.ErrorCode(err)))
		span.SetStatus(codes.Error, silo.ErrorMessage(err))
	default:
		span.SetAttributes(tracing.Outcome.String("succeeded"))
	}
}
