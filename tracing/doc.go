// Package tracing sets up Silo's OpenTelemetry traces: the tracer provider
// that exports spans over OTLP/HTTP when the standard OTEL_EXPORTER_OTLP_*
// variables name an endpoint (and costs nothing otherwise), the log handler
// that stamps log lines with the trace and span of their context, and the
// W3C traceparent strings that carry a trace across a River job or a
// resumed operation.
//
// The services take a trace.TracerProvider in their Config; nil makes no
// spans. Only cmd/silo builds a Provider and hands it to them, so a test
// that runs several servers in one process gives each its own, and the
// global provider of the otel package is never set.
package tracing
