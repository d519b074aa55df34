package main

import (
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/silo-db/silo/internal/pgtest"
)

// otlpReceiver is an OTLP/HTTP endpoint in the test: it takes the
// protobuf export requests at /v1/traces and keeps their spans.
type otlpReceiver struct {
	*httptest.Server
	mu       sync.Mutex
	spans    []receivedSpan
	requests int
}

// receivedSpan is a span as it arrived, with its resource's attributes.
type receivedSpan struct {
	TraceID, SpanID, ParentID string
	Name                      string
	Kind                      tracepb.Span_SpanKind
	Attrs                     map[string]string
	Resource                  map[string]string
	Status                    *tracepb.Status
}

func startOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	r := &otlpReceiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.Close)
	return r
}

func (r *otlpReceiver) serve(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path != "/v1/traces" || req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "OTLP/HTTP protobuf traces only", http.StatusNotFound)
		return
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		gz, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = gz
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var export coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &export); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.requests++
	for _, rs := range export.ResourceSpans {
		res := attrMap(rs.GetResource().GetAttributes())
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				r.spans = append(r.spans, receivedSpan{
					TraceID: hex.EncodeToString(s.TraceId), SpanID: hex.EncodeToString(s.SpanId),
					ParentID: hex.EncodeToString(s.ParentSpanId), Name: s.Name, Kind: s.Kind,
					Attrs: attrMap(s.Attributes), Resource: res, Status: s.Status,
				})
			}
		}
	}
	r.mu.Unlock()
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// received returns the spans so far and the export requests that brought
// them.
func (r *otlpReceiver) received() ([]receivedSpan, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]receivedSpan(nil), r.spans...), r.requests
}

func attrMap(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		v := kv.GetValue()
		switch v.Value.(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.Key] = v.GetStringValue()
		case *commonpb.AnyValue_IntValue:
			m[kv.Key] = strconv.FormatInt(v.GetIntValue(), 10)
		case *commonpb.AnyValue_BoolValue:
			m[kv.Key] = strconv.FormatBool(v.GetBoolValue())
		default:
			m[kv.Key] = v.String()
		}
	}
	return m
}

// clearOTELEnv unsets the OpenTelemetry variables the machine may have, so
// that a test sets exactly those it means.
func clearOTELEnv(t *testing.T) {
	t.Helper()
	for _, name := range []string{"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
		"OTEL_TRACES_SAMPLER", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_BSP_SCHEDULE_DELAY"} {
		t.Setenv(name, "")
	}
}

// tracedServer runs `silo serve` in-process with the environment set, a
// shard of the test fleet registered through the API, and returns a
// function running the CLI against it, the server's stderr (its JSON log),
// its URL and the function that stops it.
func tracedServer(t *testing.T) (cli func(args ...string) (string, error), log *syncBuffer, url string, stop func() error) {
	t.Helper()
	fleet := pgtest.Start(t)
	const token = "traces-test-token-0123456789"
	t.Setenv("SILO_ADMIN_TOKEN", token)
	t.Setenv("SILO_SECRET_KEY", strings.Repeat("ef", 32))
	t.Setenv("SILO_CATALOG_DSN", pgtest.NewDatabase(t, fleet.Catalog))
	var out syncBuffer
	log = &syncBuffer{}
	stop = background(t, &out, log, "serve", "--listen", "127.0.0.1:0", "--warm-pool-size", "0")
	addrRE := regexp.MustCompile(`"msg":"silo serving".*"addr":"([^"]+)"`)
	for deadline := time.Now().Add(60 * time.Second); url == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if m := addrRE.FindStringSubmatch(log.String()); m != nil {
			url = "http://" + m[1]
		}
	}
	require.NotEmpty(t, url, "no address logged: %s", log.String())
	cli = func(args ...string) (string, error) {
		t.Helper()
		return runSilo(t, context.Background(), "", append(args, "--url", url, "--token", token)...)
	}
	_, err := cli("shard", "add", "traces-1", "--dsn", fleet.Shards[0].DSN("postgres"))
	require.NoError(t, err)
	return cli, log, url, stop
}

// logLines returns the JSON log lines whose msg is msg.
func logLines(t *testing.T, log string, msg string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), l)
		if m["msg"] == msg {
			lines = append(lines, m)
		}
	}
	return lines
}

// A real `silo serve` with OTEL_EXPORTER_OTLP_ENDPOINT set sends its spans
// to the endpoint: the request that creates a tenant, the operation it
// starts and its steps in the same trace; the data API's request with the
// router's acquire and query under it. The request's log line carries the
// trace id. The batch is exported at shutdown (the schedule delay is a
// minute), within the shutdown timeout.
func TestTracesExported(t *testing.T) {
	clearOTELEnv(t)
	recv := startOTLPReceiver(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", recv.URL)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
	cli, log, url, stop := tracedServer(t)

	_, err := cli("tenant", "create", "tracy", "--shard", "traces-1")
	require.NoError(t, err)
	got, err := cli("query", "tracy", "SELECT 41 + 1 AS answer")
	require.NoError(t, err)
	require.Contains(t, got, "42")
	// A caller's traceparent makes the request span its child.
	const callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, err := http.NewRequest(http.MethodGet, url+"/v1/tenants/tracy", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer traces-test-token-0123456789")
	req.Header.Set("traceparent", "00-"+callerTrace+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	require.NoError(t, stop())
	spans, exports := recv.received()
	require.NotEmpty(t, spans, "no span exported at shutdown; the log:\n%s", log.String())
	t.Logf("%d spans in %d exports", len(spans), exports)
	byID := map[string]receivedSpan{}
	for _, s := range spans {
		byID[s.SpanID] = s
	}
	find := func(name string, match func(receivedSpan) bool) []receivedSpan {
		var found []receivedSpan
		for _, s := range spans {
			if s.Name == name && (match == nil || match(s)) {
				found = append(found, s)
			}
		}
		return found
	}

	// Every span names the service and its version.
	for _, s := range spans {
		require.Equal(t, "silo", s.Resource["service.name"], s.Name)
		require.Equal(t, version, s.Resource["service.version"], s.Name)
	}

	// The create request, and the operation it started in its trace.
	creates := find("POST /v1/tenants", nil)
	require.Len(t, creates, 1)
	create := creates[0]
	require.Equal(t, tracepb.Span_SPAN_KIND_SERVER, create.Kind)
	require.Equal(t, "/v1/tenants", create.Attrs["http.route"])
	require.Equal(t, "POST", create.Attrs["http.request.method"])
	require.Contains(t, []string{"201", "202"}, create.Attrs["http.response.status_code"])
	ops := find("operation create", func(s receivedSpan) bool { return s.Attrs["silo.tenant.id"] == "tracy" })
	require.Len(t, ops, 1)
	op := ops[0]
	require.Equal(t, create.TraceID, op.TraceID, "the operation is in the request's trace")
	require.Equal(t, create.SpanID, op.ParentID, "the operation's run is the request's child")
	require.Equal(t, "succeeded", op.Attrs["silo.outcome"])
	var steps []string
	for _, s := range spans {
		if s.ParentID == op.SpanID {
			require.True(t, strings.HasPrefix(s.Name, "step "), s.Name)
			require.Equal(t, create.TraceID, s.TraceID)
			require.Equal(t, "succeeded", s.Attrs["silo.outcome"], s.Name)
			steps = append(steps, s.Name)
		}
	}
	require.GreaterOrEqual(t, len(steps), 2, "the create's steps: %v", steps)
	t.Logf("the create's steps: %v", steps)

	// The query: the data API's request, with the router's acquire and
	// query under it, naming the tenant and the shard but not the SQL.
	queries := find("POST /v1/tenants/:id/query", nil)
	require.Len(t, queries, 1)
	query := queries[0]
	require.Equal(t, "tracy", query.Attrs["silo.tenant.id"])
	for _, name := range []string{"router.acquire", "router.query"} {
		found := find(name, func(s receivedSpan) bool { return s.ParentID == query.SpanID })
		require.Len(t, found, 1, name)
		require.Equal(t, query.TraceID, found[0].TraceID, name)
		require.Equal(t, "tracy", found[0].Attrs["silo.tenant.id"], name)
		require.Equal(t, "traces-1", found[0].Attrs["silo.shard"], name)
	}

	// A span's name never holds a tenant's id; no attribute holds SQL or a
	// secret.
	for _, s := range spans {
		require.NotContains(t, s.Name, "tracy")
		for k, v := range s.Attrs {
			require.NotContains(t, v, "41 + 1", "%s %s", s.Name, k)
			require.NotContains(t, v, "traces-test-token", "%s %s", s.Name, k)
			require.NotContains(t, v, strings.Repeat("ef", 32), "%s %s", s.Name, k)
		}
	}

	// The caller's trace goes on in Silo.
	gets := find("GET /v1/tenants/:id", func(s receivedSpan) bool { return s.TraceID == callerTrace })
	require.Len(t, gets, 1)
	require.Equal(t, "00f067aa0ba902b7", gets[0].ParentID)

	// Log lines name their trace: the request's, and the operation's end.
	var logged bool
	for _, l := range logLines(t, log.String(), "http request") {
		if l["route"] == "/v1/tenants" && l["method"] == "POST" {
			require.Equal(t, create.TraceID, l["trace_id"], "the request's log line: %v", l)
			require.Equal(t, create.SpanID, l["span_id"])
			logged = true
		}
	}
	require.True(t, logged, "the create request was logged")
	finished := logLines(t, log.String(), "operation finished")
	require.NotEmpty(t, finished)
	require.Equal(t, create.TraceID, finished[0]["trace_id"])
	require.Equal(t, op.SpanID, finished[0]["span_id"])
	require.Len(t, logLines(t, log.String(), "traces exported over OTLP"), 1)
}

// Without an endpoint, traces are off: nothing is sent, no log line names
// a trace, a caller's traceparent is not read, and Silo works as ever.
func TestTracesOff(t *testing.T) {
	clearOTELEnv(t)
	cli, log, url, stop := tracedServer(t)
	_, err := cli("tenant", "create", "quiet", "--shard", "traces-1")
	require.NoError(t, err)
	got, err := cli("query", "quiet", "SELECT 41 + 1 AS answer")
	require.NoError(t, err)
	require.Contains(t, got, "42")
	req, err := http.NewRequest(http.MethodGet, url+"/v1/tenants/quiet", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer traces-test-token-0123456789")
	req.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, stop())

	off := logLines(t, log.String(), "traces off")
	require.Len(t, off, 1)
	require.Equal(t, "no OTEL_EXPORTER_OTLP_ENDPOINT", off[0]["reason"])
	require.NotEmpty(t, logLines(t, log.String(), "http request"))
	require.NotEmpty(t, logLines(t, log.String(), "operation finished"))
	require.NotContains(t, log.String(), `"trace_id"`)
	require.NotContains(t, log.String(), "traces not flushed")
}

// OTEL_SDK_DISABLED turns traces off though an endpoint is set: the
// receiver gets nothing.
func TestTracesDisabled(t *testing.T) {
	clearOTELEnv(t)
	recv := startOTLPReceiver(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", recv.URL)
	t.Setenv("OTEL_SDK_DISABLED", "true")
	cli, log, _, stop := tracedServer(t)
	_, err := cli("shard", "list")
	require.NoError(t, err)
	require.NoError(t, stop())
	spans, exports := recv.received()
	require.Empty(t, spans)
	require.Zero(t, exports)
	off := logLines(t, log.String(), "traces off")
	require.Len(t, off, 1)
	require.Equal(t, "OTEL_SDK_DISABLED=true", off[0]["reason"])
}
