package api

import (
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/silo-db/silo/tracing"
)

// traceMiddleware makes a span of each request, named by its method and
// route pattern ("POST /v1/tenants/:id/query"), never by its path: a path
// holds tenant ids. The tenant's id is an attribute instead, on the routes
// of one tenant. A W3C traceparent header the caller sends makes the span
// its child, so a client's trace goes on through Silo.
//
// OpenTelemetry's own echo middleware is not used: it is deprecated, and
// removed from the contrib repository in favour of one that Echo's authors
// keep, which is not published where our modules come from; this one is
// the few lines Silo needs, named by the same route patterns as the
// metrics.
func (s *Server) traceMiddleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		route := c.Path()
		name := req.Method
		if s.routes[route] {
			name += " " + route
		} else {
			route = "" // no route matched: the method alone, per the conventions
		}
		ctx := tracing.Extract(req.Context(), propagation.HeaderCarrier(req.Header))
		attrs := []attribute.KeyValue{
			semconv.HTTPRequestMethodKey.String(req.Method),
			semconv.URLPath(req.URL.Path),
			semconv.ClientAddress(c.RealIP()),
			tracing.RequestID.String(requestID(c)),
		}
		if route != "" {
			attrs = append(attrs, semconv.HTTPRoute(route))
		}
		if ua := req.UserAgent(); ua != "" {
			attrs = append(attrs, semconv.UserAgentOriginal(ua))
		}
		if strings.HasPrefix(route, "/v1/tenants/:id") {
			attrs = append(attrs, tracing.TenantID.String(c.Param("id")))
		}
		ctx, span := s.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
		defer span.End()
		c.SetRequest(req.WithContext(ctx))
		err := next(c)
		status := c.Response().Status
		span.SetAttributes(semconv.HTTPResponseStatusCode(status))
		if code, ok := c.Get(ctxErrorCode).(string); ok {
			span.SetAttributes(tracing.ErrorCode.String(code))
		}
		// A server's span fails on 5xx only: a 4xx is the client's.
		if status >= http.StatusInternalServerError {
			span.SetStatus(codes.Error, http.StatusText(status))
		}
		return err
	}
}
