package tracing_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/silo-db/silo/tracing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// otelVars are the variables Start reads; each case sets them all.
var otelVars = []string{"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
	"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"}

func TestTraceStart(t *testing.T) {
	for _, tc := range []struct {
		name     string
		env      map[string]string
		endpoint string // on, exporting there
		off      string // off, for this reason
		err      string
	}{
		{name: "no endpoint", off: "no OTEL_EXPORTER_OTLP_ENDPOINT"},
		{name: "endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, endpoint: "http://127.0.0.1:4318"},
		{name: "traces endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector:4318/v1/traces"}, endpoint: "https://collector:4318/v1/traces"},
		{name: "credentials dropped", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://user:hunter2@collector:4318"}, endpoint: "http://collector:4318"},
		{name: "disabled", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "TRUE"}, off: "OTEL_SDK_DISABLED=true"},
		{name: "exporter none", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}, off: "OTEL_TRACES_EXPORTER=none"},
		{name: "exporter otlp", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "otlp"}, endpoint: "http://127.0.0.1:4318"},
		{name: "exporter console", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "console"}, err: "OTLP only"},
		{name: "grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, err: "HTTP only"},
		{name: "traces protocol wins", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
			"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, endpoint: "http://127.0.0.1:4318"},
		{name: "not a URL", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, err: "must be an http:// or https:// URL"},
		{name: "not a URL, password kept out", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://u:hunter2@collector"}, err: "ftp://u:xxxxx@collector"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, name := range otelVars {
				t.Setenv(name, tc.env[name])
			}
			p, err := tracing.Start(context.Background(), "v1.2.3", slog.Default())
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				require.NotContains(t, err.Error(), "hunter2")
				require.Nil(t, p)
				return
			}
			require.NoError(t, err)
			defer func() { require.NoError(t, p.Shutdown(context.Background())) }()
			require.Equal(t, tc.endpoint, p.Endpoint())
			require.Equal(t, tc.off, p.Off())
			require.Equal(t, tc.endpoint != "", p.Enabled())
			if tc.endpoint == "" {
				require.Nil(t, p.TracerProvider(), "off: no provider, so no spans")
				return
			}
			require.NotNil(t, p.TracerProvider())
		})
	}
}

// Off, the tracer makes no span and the context keeps none.
func TestTraceTracerNil(t *testing.T) {
	ctx, span := tracing.Tracer(nil, "test").Start(context.Background(), "x")
	defer span.End()
	require.False(t, span.IsRecording())
	require.False(t, trace.SpanContextFromContext(ctx).IsValid())
	require.Empty(t, tracing.Traceparent(ctx))
}

// A traceparent carries a span across a process boundary: a span started
// under WithTraceparent is its child; a context with a span of its own
// keeps it.
func TestTraceTraceparent(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { require.NoError(t, tp.Shutdown(context.Background())) }()
	tracer := tp.Tracer("test")

	ctx, parent := tracer.Start(context.Background(), "request")
	carried := tracing.Traceparent(ctx)
	parent.End()
	require.Regexp(t, `^00-[0-9a-f]{32}-[0-9a-f]{16}-01$`, carried)

	_, child := tracer.Start(tracing.WithTraceparent(context.Background(), carried), "operation")
	child.End()
	require.Equal(t, parent.SpanContext().TraceID(), child.SpanContext().TraceID())
	ended := rec.Ended()
	require.Len(t, ended, 2)
	require.Equal(t, parent.SpanContext().SpanID(), ended[1].Parent().SpanID())
	require.True(t, ended[1].Parent().IsRemote())

	ctx2, own := tracer.Start(context.Background(), "own")
	defer own.End()
	require.Equal(t, ctx2, tracing.WithTraceparent(ctx2, carried), "a span of its own wins")
	for _, bad := range []string{"", "nonsense", "00-00000000000000000000000000000000-0000000000000000-01"} {
		require.False(t, trace.SpanContextFromContext(tracing.WithTraceparent(context.Background(), bad)).IsValid(), bad)
	}
}

// Lines logged with a span's context carry its trace and span ids; other
// lines, and the handler's attributes and groups, are as they were.
func TestTraceLogHandler(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(tracing.LogHandler(slog.NewJSONHandler(&buf, nil))).With("component", "test")
	tp := sdktrace.NewTracerProvider()
	defer func() { require.NoError(t, tp.Shutdown(context.Background())) }()
	ctx, span := tp.Tracer("test").Start(context.Background(), "x")
	defer span.End()

	lines := func() []map[string]any {
		var out []map[string]any
		dec := json.NewDecoder(&buf)
		for dec.More() {
			var m map[string]any
			require.NoError(t, dec.Decode(&m))
			out = append(out, m)
		}
		buf.Reset()
		return out
	}
	log.InfoContext(ctx, "with span", "k", "v")
	log.Info("without")
	log.WithGroup("g").InfoContext(context.Background(), "grouped", "k", "v")
	got := lines()
	require.Len(t, got, 3)
	require.Equal(t, span.SpanContext().TraceID().String(), got[0]["trace_id"])
	require.Equal(t, span.SpanContext().SpanID().String(), got[0]["span_id"])
	require.Equal(t, "v", got[0]["k"])
	require.Equal(t, "test", got[0]["component"])
	require.NotContains(t, got[1], "trace_id")
	require.Equal(t, map[string]any{"k": "v"}, got[2]["g"])
	require.Equal(t, tracing.LogHandler(log.Handler()), log.Handler(), "wrapping twice is wrapping once")
}
