package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ServiceName is the service.name of Silo's spans, unless OTEL_SERVICE_NAME
// or OTEL_RESOURCE_ATTRIBUTES says otherwise.
const ServiceName = "silo"

// Attributes Silo's spans carry besides the semantic conventions' own. A
// tenant id may be in an attribute (spans are for operators), but never in
// a span's name.
const (
	TenantID      = attribute.Key("silo.tenant.id")
	Shard         = attribute.Key("silo.shard")
	OperationID   = attribute.Key("silo.operation.id")
	OperationKind = attribute.Key("silo.operation.kind")
	Outcome       = attribute.Key("silo.outcome")
	ErrorCode     = attribute.Key("silo.error.code")
	RequestID     = attribute.Key("silo.request.id")
	MigrationRun  = attribute.Key("silo.migration.run")
)

// Provider is the tracer provider of one server. Create it with Start and
// shut it down with Shutdown; it is safe for concurrent use.
type Provider struct {
	sdk      *sdktrace.TracerProvider // nil when traces are off
	endpoint string
	off      string // why traces are off
}

// Start returns the server's Provider. Traces are on when
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set,
// unless OTEL_SDK_DISABLED is true or OTEL_TRACES_EXPORTER is none; then
// spans go over OTLP/HTTP (protobuf) in batches, configured by the other
// standard variables (OTEL_EXPORTER_OTLP_HEADERS, OTEL_TRACES_SAMPLER,
// OTEL_BSP_SCHEDULE_DELAY, OTEL_RESOURCE_ATTRIBUTES, ...). Off, the
// Provider makes no spans and starts nothing. version is the
// service.version. Start returns an error for settings it cannot honour: a
// protocol other than http/protobuf, an exporter other than otlp, an
// endpoint that is no URL. ctx bounds the start only; nothing is sent
// until spans end. Export errors (a collector down) go to log as warnings:
// that handler is the OpenTelemetry SDK's one global, so in a process with
// several servers the last one started logs them all.
func Start(ctx context.Context, version string, log *slog.Logger) (*Provider, error) {
	endpoint, off, err := endpointFromEnv()
	if err != nil {
		return nil, err
	}
	if off != "" {
		return &Provider{off: off}, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("traces: the OTLP exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(ServiceName), semconv.ServiceVersion(version)),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		// Last, so that the operator's OTEL_SERVICE_NAME and
		// OTEL_RESOURCE_ATTRIBUTES win. Never WithProcess: the command line
		// may hold a token.
		resource.WithFromEnv(),
	)
	if err != nil {
		return nil, fmt.Errorf("traces: the resource: %w", err)
	}
	// Else the SDK prints its errors with the standard library's logger,
	// outside the JSON log.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("traces: export failed", "err", err) }))
	sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return &Provider{sdk: sdk, endpoint: endpoint}, nil
}

// endpointFromEnv returns where spans go as the environment says, with any
// user and password removed, or why traces are off, or why the settings
// cannot be honoured.
func endpointFromEnv() (endpoint, off string, err error) {
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return "", "OTEL_SDK_DISABLED=true", nil
	}
	switch exp := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")); exp {
	case "none":
		return "", "OTEL_TRACES_EXPORTER=none", nil
	case "", "otlp":
	default:
		return "", "", fmt.Errorf("traces: OTEL_TRACES_EXPORTER=%q: Silo exports over OTLP only (otlp, or none)", exp)
	}
	endpoint = strings.TrimSpace(os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
	if endpoint == "" {
		endpoint = strings.TrimSpace(os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"))
	}
	if endpoint == "" {
		return "", "no OTEL_EXPORTER_OTLP_ENDPOINT", nil
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if p := strings.TrimSpace(os.Getenv(name)); p != "" {
			if p != "http/protobuf" {
				return "", "", fmt.Errorf("traces: %s=%q: Silo sends OTLP over HTTP only (http/protobuf); a collector's OTLP/HTTP port is 4318", name, p)
			}
			break // the traces-specific one wins
		}
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", "", fmt.Errorf("traces: the OTLP endpoint %q must be an http:// or https:// URL", redact(endpoint))
	}
	u.User = nil
	return u.String(), "", nil
}

// redact removes the password of a URL that parses, and returns one that
// does not as a placeholder.
func redact(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return "(not a URL)"
}

// Enabled reports whether spans are exported.
func (p *Provider) Enabled() bool { return p.sdk != nil }

// Endpoint returns where spans go, without credentials; "" when off.
func (p *Provider) Endpoint() string { return p.endpoint }

// Off returns why traces are off ("no OTEL_EXPORTER_OTLP_ENDPOINT",
// "OTEL_SDK_DISABLED=true", ...), or "" when they are on.
func (p *Provider) Off() string { return p.off }

// TracerProvider returns the provider to hand the services, or nil when
// traces are off: a service given nil makes no spans.
func (p *Provider) TracerProvider() trace.TracerProvider {
	if p.sdk == nil {
		return nil
	}
	return p.sdk
}

// Shutdown exports the spans still buffered, within ctx, and stops the
// exporter. Spans that end afterwards are dropped. Shutting down twice, or
// a Provider that is off, returns nil.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p.sdk == nil {
		return nil
	}
	err := p.sdk.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("traces: spans still buffered were not exported in time: %w", err)
	}
	return err
}

// Tracer returns tp's tracer for the package name, or a tracer that makes
// no spans when tp is nil.
func Tracer(tp trace.TracerProvider, name string) trace.Tracer {
	if tp == nil {
		return noop.NewTracerProvider().Tracer(name)
	}
	return tp.Tracer(name)
}

// traceContext reads and writes W3C traceparent headers.
var traceContext propagation.TraceContext

// Traceparent returns the W3C traceparent of ctx's span, to carry the
// trace across a process boundary (a River job, an operation resumed by
// another server); "" when ctx has no span, as when traces are off.
func Traceparent(ctx context.Context) string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ""
	}
	c := propagation.MapCarrier{}
	traceContext.Inject(ctx, c)
	return c["traceparent"]
}

// WithTraceparent returns ctx with the span that traceparent names as its
// remote parent, unless ctx has a span already or traceparent is empty or
// invalid: then ctx as it is.
func WithTraceparent(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" || trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	return traceContext.Extract(ctx, propagation.MapCarrier{"traceparent": traceparent})
}

// Extract returns ctx with the trace context of an incoming request's
// headers (W3C traceparent and tracestate), if any.
func Extract(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	return traceContext.Extract(ctx, c)
}
