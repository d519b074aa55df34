package api_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/console"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/rebalancer"
	"github.com/silo-db/silo/reconcile"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

func TestMain(m *testing.M) {
	openapi3filter.RegisterBodyDecoder("application/problem+json", openapi3filter.JSONBodyDecoder)
	openapi3filter.RegisterBodyDecoder("application/yaml", func(r io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		b, err := io.ReadAll(r)
		return string(b), err
	})
	pgtest.Main(m)
}

const token = "test-admin-token-0123456789"

type bundle struct {
	store  *shardmap.Store
	fleet  *pgtest.Fleet
	url    string
	router routers.Router
	ctx    context.Context
}

type serverOpts struct {
	bodyLimit      int64
	catalog        api.Catalog
	provisioner    api.Provisioner
	requestTimeout time.Duration
	// The data API: noRouter turns it off.
	noRouter       bool
	queryTimeout   time.Duration
	maxRows        int
	maxResultBytes int
	// migrationFiles turns on the migration runner, over these files.
	migrationFiles fs.FS
	// check turns on the fleet checker, whose metrics /metrics serves.
	check bool
	// console serves the web console at /console.
	console bool
}

// secretKey seals tenant passwords for the provisioner, and opens them for
// the router.
var secretKey = func() []byte {
	key := make([]byte, shardmap.SecretKeyLen)
	_, _ = rand.Read(key)
	return key
}()

// setup serves the API over a fresh catalog database, with a running
// provisioner over the test binary's shard clusters and a router for the
// data API.
func setup(t *testing.T, opts ...serverOpts) *bundle {
	t.Helper()
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	pool, store := catalogtest.New(t, log)
	var runner *migrations.Runner
	prov, eng := newProvisioner(t, pool, store, log)
	sealer, err := shardmap.NewSealer(secretKey)
	require.NoError(t, err)
	dialer, err := shardmap.NewDialer(shardmap.DialerConfig{Store: store, Sealer: sealer})
	require.NoError(t, err)
	for _, o := range opts {
		if o.migrationFiles != nil {
			runner, err = migrations.NewRunner(migrations.Config{
				Catalog: pool, Store: store, Engine: eng, Dialer: dialer, Files: o.migrationFiles, Logger: log, Templates: prov,
			})
			require.NoError(t, err)
		}
	}
	// Moves are the rebalancer's operations: registered before the engine
	// starts.
	reb, err := rebalancer.New(rebalancer.Config{Catalog: pool, Store: store, Dialer: dialer, Engine: eng, Provisioner: prov, Logger: log})
	require.NoError(t, err)
	require.NoError(t, eng.Start(ctx))
	rt, err := router.New(router.Config{Catalog: pool, Store: store, SecretKey: secretKey, Logger: log})
	require.NoError(t, err)
	require.NoError(t, rt.Start(ctx))
	t.Cleanup(rt.Stop)

	cfg := api.Config{Catalog: store, Provisioner: prov, AdminToken: token, Logger: log, Router: rt, Rebalancer: reb}
	if runner != nil {
		cfg.Migrations = runner
	}
	for _, o := range opts {
		if o.check {
			sealer, err := shardmap.NewSealer(secretKey)
			require.NoError(t, err)
			dialer, err := shardmap.NewDialer(shardmap.DialerConfig{Store: store, Sealer: sealer})
			require.NoError(t, err)
			cfg.Registry = prometheus.NewRegistry()
			cfg.Checker, err = reconcile.New(reconcile.Config{Store: store, Dialer: dialer, Dropper: prov, Logger: log, Registry: cfg.Registry})
			require.NoError(t, err)
		}
	}
	for _, o := range opts {
		cfg.BodyLimit = o.bodyLimit
		if o.catalog != nil {
			cfg.Catalog = o.catalog
		}
		if o.provisioner != nil {
			cfg.Provisioner = o.provisioner
		}
		if o.noRouter {
			cfg.Router = nil
		}
		if o.console {
			cfg.Console = console.Handler()
		}
		cfg.RequestTimeout, cfg.QueryTimeout = o.requestTimeout, o.queryTimeout
		cfg.MaxRows, cfg.MaxResultBytes = o.maxRows, o.maxResultBytes
	}
	return serve(t, ctx, fleet, store, cfg)
}

// serve serves an API server made with cfg until the test ends.
func serve(t *testing.T, ctx context.Context, fleet *pgtest.Fleet, store *shardmap.Store, cfg api.Config) *bundle {
	t.Helper()
	srv, err := api.New(cfg)
	require.NoError(t, err)
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)

	doc, err := api.LoadSpec()
	require.NoError(t, err)
	doc.Servers = openapi3.Servers{{URL: ts.URL}}
	router, err := legacy.NewRouter(doc)
	require.NoError(t, err)
	return &bundle{store: store, fleet: fleet, url: ts.URL, router: router, ctx: ctx}
}

// hasPgDump reports whether a pg_dump sits beside the test's server
// binaries: the PostgreSQL 16+ packages of the npm registry have none, and
// Debian's pg_dump 15 refuses a newer server, so exports are not tried.
func hasPgDump(t testing.TB) bool {
	t.Helper()
	binDir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	if _, err := os.Stat(filepath.Join(binDir, "pg_dump")); err != nil {
		t.Logf("no pg_dump in %s: exports are not tried", binDir)
		return false
	}
	return true
}

// newProvisioner returns a provisioner over the catalog in pool and its
// engine, not yet started (the caller adds jobs, then starts it); both stop
// before the pool closes, the engine first.
func newProvisioner(t testing.TB, pool *pgxpool.Pool, store *shardmap.Store, log *slog.Logger) (*provisioner.Provisioner, *engine.Engine) {
	t.Helper()
	binDir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	eng := catalogtest.NewEngine(t, pool, store, log, engine.Config{})
	prov, err := provisioner.New(provisioner.Config{
		Catalog: pool, Store: store, Engine: eng, SecretKey: secretKey, Logger: log,
		PgDump: filepath.Join(binDir, "pg_dump"),
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, eng.Stop(ctx))
		require.NoError(t, prov.Stop(ctx))
	})
	return prov, eng
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) problem(t *testing.T) api.Problem {
	t.Helper()
	require.Equal(t, "application/problem+json", r.header.Get("Content-Type"), "body: %s", r.body)
	var p api.Problem
	require.NoError(t, json.Unmarshal(r.body, &p))
	require.Equal(t, r.status, p.Status)
	require.NotEmpty(t, p.Title)
	require.NotNil(t, p.Detail)
	return p
}

// do sends a request with the admin token (unless auth is "") and checks
// the response against the OpenAPI document; a request that succeeds must
// itself conform.
func (b *bundle) do(t *testing.T, method, path, body string, header ...string) response {
	t.Helper()
	return b.doAuth(t, "Bearer "+token, method, path, body, header...)
}

func (b *bundle) doAuth(t *testing.T, auth, method, path, body string, header ...string) response {
	t.Helper()
	r, err := b.send(auth, method, path, body, header...)
	require.NoError(t, err)
	b.validate(t, method, path, body, r, header...)
	return r
}

// send sends a request and reads the whole response; unlike do, it may run
// on any goroutine. Validate its response with b.validate.
func (b *bundle) send(auth, method, path, body string, header ...string) (response, error) {
	req, err := http.NewRequestWithContext(b.ctx, method, b.url+path, strings.NewReader(body))
	if err != nil {
		return response{}, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{status: resp.StatusCode, header: resp.Header, body: raw}, nil
}

func (b *bundle) validate(t *testing.T, method, path, body string, r response, header ...string) {
	t.Helper()
	req, err := http.NewRequest(method, b.url+path, strings.NewReader(body))
	require.NoError(t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	route, params, err := b.router.FindRoute(req)
	if err != nil {
		require.Equal(t, http.StatusNotFound, r.status, "a path the spec lacks must be a 404: %s %s", method, path)
		return
	}
	in := &openapi3filter.RequestValidationInput{
		Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
	}
	if r.status < 300 {
		require.NoError(t, openapi3filter.ValidateRequest(b.ctx, in), "the server accepted a request the spec forbids")
	}
	err = openapi3filter.ValidateResponse(b.ctx, &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: r.status, Header: r.header,
		Body:    io.NopCloser(bytes.NewReader(r.body)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	})
	require.NoError(t, err, "response of %s %s breaks the spec: %s", method, path, r.body)
}

func decode[T any](t *testing.T, r response) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal(r.body, &v), "body: %s", r.body)
	return v
}

func (b *bundle) shardNames(t *testing.T) []string {
	t.Helper()
	list, err := b.store.ListShards(b.ctx, silo.Page{Limit: silo.MaxPageLimit})
	require.NoError(t, err)
	names := []string{}
	for _, sh := range list.Items {
		names = append(names, sh.Name)
	}
	return names
}

func TestSpecIsValid(t *testing.T) {
	t.Parallel()
	doc, err := api.LoadSpec()
	require.NoError(t, err)
	require.NoError(t, doc.Validate(context.Background()))
}

func TestHealthAndSpec(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.doAuth(t, "", "GET", "/healthz", "")
	require.Equal(t, 200, r.status)
	r = b.doAuth(t, "", "GET", "/readyz", "")
	require.Equal(t, 200, r.status)
	r = b.doAuth(t, "", "GET", "/v1/openapi.yaml", "")
	require.Equal(t, 200, r.status)
	require.Equal(t, api.Spec, r.body)
}

func TestNotReady(t *testing.T) {
	t.Parallel()
	// A catalog nothing listens on: the process is up, but not ready.
	pool, err := pgxpool.New(context.Background(), "postgres://silo:x@127.0.0.1:1/silo?connect_timeout=1")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	store, err := shardmap.New(shardmap.Config{Pool: pool})
	require.NoError(t, err)
	b := setup(t, serverOpts{catalog: store})
	require.Equal(t, 200, b.doAuth(t, "", "GET", "/healthz", "").status)
	r := b.doAuth(t, "", "GET", "/readyz", "")
	require.Equal(t, 503, r.status)
	require.Equal(t, api.ProblemCode(silo.EUNAVAILABLE), r.problem(t).Code)
}

func TestAuth(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, auth := range []string{"", "Bearer ", "Bearer wrong-token-0123456789", "Basic " + token, token} {
		r := b.doAuth(t, auth, "GET", "/v1/shards", "")
		require.Equal(t, 401, r.status, "auth %q", auth)
		require.Equal(t, api.ProblemCode(silo.EUNAUTHORIZED), r.problem(t).Code)
		require.Contains(t, r.header.Get("WWW-Authenticate"), "Bearer")
	}
	// A mutation without the token changes nothing.
	r := b.doAuth(t, "", "POST", "/v1/shards", `{"name":"a","dsn":"`+b.fleet.Shards[0].DSN("postgres")+`"}`)
	require.Equal(t, 401, r.status)
	require.Empty(t, b.shardNames(t))
	list, err := b.store.ListAudit(b.ctx, shardmap.AuditFilter{}, silo.Page{})
	require.NoError(t, err)
	require.Empty(t, list.Items, "unauthenticated requests never reach the catalog")
}

func TestShardLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t)
	shard := b.fleet.Shards[0]
	dsn := shard.DSN("postgres")

	r := b.do(t, "POST", "/v1/shards", `{"name":"eu-1","dsn":"`+dsn+`","region":"eu","weight":50}`)
	require.Equal(t, 201, r.status, "body: %s", r.body)
	require.Equal(t, "/v1/shards/eu-1", r.header.Get("Location"))
	require.NotContains(t, string(r.body), shard.Password(), "the DSN's password is never returned")
	sh := decode[api.Shard](t, r)
	require.Equal(t, api.Shard{
		Name: "eu-1", Dsn: silo.RedactDSN(dsn), Region: "eu", Weight: 50, State: "active",
		CreatedAt: sh.CreatedAt, UpdatedAt: sh.UpdatedAt,
	}, sh)

	r = b.do(t, "GET", "/v1/shards/eu-1", "")
	require.Equal(t, 200, r.status)
	require.NotContains(t, string(r.body), shard.Password())

	r = b.do(t, "GET", "/v1/shards", "")
	require.Equal(t, 200, r.status)
	list := decode[api.ShardList](t, r)
	require.Len(t, list.Items, 1)
	require.Nil(t, list.NextCursor)

	for _, step := range []struct{ verb, state string }{{"drain", "draining"}, {"disable", "disabled"}, {"activate", "active"}} {
		r = b.do(t, "POST", "/v1/shards/eu-1/"+step.verb, "")
		require.Equal(t, 200, r.status)
		require.Equal(t, api.ShardState(step.state), decode[api.Shard](t, r).State)
	}

	r = b.do(t, "DELETE", "/v1/shards/eu-1", "")
	require.Equal(t, 204, r.status)
	r = b.do(t, "GET", "/v1/shards/eu-1", "")
	require.Equal(t, 404, r.status)
	require.Equal(t, api.ProblemCode(silo.ENOTFOUND), r.problem(t).Code)

	// The audit log names the admin, the request and the redacted DSN.
	r = b.do(t, "GET", "/v1/audit?limit=10", "", "X-Request-Id", "my-request-1")
	require.Equal(t, 200, r.status)
	require.Equal(t, "my-request-1", r.header.Get("X-Request-Id"))
	entries := decode[api.AuditList](t, r).Items
	var actions []string
	for _, e := range entries {
		actions = append(actions, e.Action)
		require.Equal(t, "admin", e.Actor)
		require.Equal(t, "ok", e.Result)
		require.NotNil(t, e.RequestId)
	}
	require.Equal(t, []string{"shard.remove", "shard.activate", "shard.disable", "shard.drain", "shard.create"}, actions)
	require.Equal(t, silo.RedactDSN(dsn), entries[4].Params["dsn"])
	require.NotContains(t, string(r.body), shard.Password())

	r = b.do(t, "GET", "/v1/audit?action=shard.drain", "")
	require.Len(t, decode[api.AuditList](t, r).Items, 1)
}

func TestShardBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t, serverOpts{bodyLimit: 4096})
	dsn := b.fleet.Shards[1].DSN("postgres")
	r := b.do(t, "POST", "/v1/shards", `{"name":"taken","dsn":"`+dsn+`"}`)
	require.Equal(t, 201, r.status)
	_, err := b.store.CreateTenant(b.ctx, silo.Tenant{ID: "acme", Shard: "taken", Database: "t_acme", Region: "default", State: silo.TenantActive})
	require.NoError(t, err)

	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string
		detail                   string
	}{
		{"malformed json", "POST", "/v1/shards", `{"name":`, 400, silo.EMALFORMED, "not valid JSON"},
		{"empty body", "POST", "/v1/shards", ``, 400, silo.EMALFORMED, "empty"},
		{"unknown field", "POST", "/v1/shards", `{"name":"a","dsn":"` + dsn + `","colour":"red"}`, 400, silo.EMALFORMED, "colour"},
		{"wrong type", "POST", "/v1/shards", `{"name":"a","dsn":"` + dsn + `","weight":"heavy"}`, 400, silo.EMALFORMED, "weight"},
		{"trailing data", "POST", "/v1/shards", `{"name":"a","dsn":"` + dsn + `"} {}`, 400, silo.EMALFORMED, "after"},
		{"too large", "POST", "/v1/shards", `{"name":"a","dsn":"` + strings.Repeat("x", 5000) + `"}`, 413, silo.ETOOLARGE, "4096 bytes"},
		{"bad name", "POST", "/v1/shards", `{"name":"Robert'); DROP TABLE shards;--","dsn":"` + dsn + `"}`, 422, silo.EINVALID, "lowercase"},
		{"name too long", "POST", "/v1/shards", `{"name":"` + strings.Repeat("a", 40) + `","dsn":"` + dsn + `"}`, 422, silo.EINVALID, "longer than 32"},
		{"zero weight", "POST", "/v1/shards", `{"name":"a","dsn":"` + dsn + `","weight":0}`, 422, silo.EINVALID, "weight"},
		{"empty region", "POST", "/v1/shards", `{"name":"a","dsn":"` + dsn + `","region":""}`, 422, silo.EINVALID, "region"},
		{"unreachable dsn", "POST", "/v1/shards", `{"name":"a","dsn":"postgres://silo:pw-secret-9@127.0.0.1:1/postgres"}`, 503, silo.EUNAVAILABLE, "cannot reach shard"},
		{"duplicate", "POST", "/v1/shards", `{"name":"taken","dsn":"` + dsn + `"}`, 409, silo.ECONFLICT, "already exists"},
		{"unknown shard", "GET", "/v1/shards/nope", "", 404, silo.ENOTFOUND, "not found"},
		{"drain unknown", "POST", "/v1/shards/nope/drain", "", 404, silo.ENOTFOUND, "not found"},
		{"remove unknown", "DELETE", "/v1/shards/nope", "", 404, silo.ENOTFOUND, "not found"},
		{"remove with tenants", "DELETE", "/v1/shards/taken", "", 409, silo.ECONFLICT, "still holds 1 tenants"},
		{"bad limit", "GET", "/v1/shards?limit=0", "", 422, silo.EINVALID, "limit"},
		{"limit not a number", "GET", "/v1/shards?limit=ten", "", 400, silo.EMALFORMED, "limit"},
		{"bad cursor", "GET", "/v1/shards?cursor=%25%25", "", 422, silo.EINVALID, "cursor"},
		{"unknown route", "GET", "/v1/nothing-here", "", 404, silo.ENOTFOUND, "Not Found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := b.do(t, tc.method, tc.path, tc.body)
			require.Equal(t, tc.status, r.status, "body: %s", r.body)
			p := r.problem(t)
			require.Equal(t, api.ProblemCode(tc.code), p.Code)
			require.Contains(t, *p.Detail, tc.detail)
			require.NotContains(t, *p.Detail, "pw-secret-9")
			require.NotNil(t, p.RequestId)
			require.Equal(t, r.header.Get("X-Request-Id"), *p.RequestId)
		})
	}
	require.Equal(t, []string{"taken"}, b.shardNames(t), "bad input changed nothing")
	sh, err := b.store.GetShard(b.ctx, "taken")
	require.NoError(t, err)
	require.Equal(t, silo.ShardActive, sh.State)
}

func TestRequestID(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.doAuth(t, "", "GET", "/healthz", "", "X-Request-Id", "abc-123")
	require.Equal(t, "abc-123", r.header.Get("X-Request-Id"))
	// An id unfit for logs is replaced, not echoed.
	r = b.doAuth(t, "", "GET", "/healthz", "", "X-Request-Id", "bad id\twith tabs")
	require.NotEqual(t, "bad id\twith tabs", r.header.Get("X-Request-Id"))
	require.Regexp(t, `^[0-9a-f]{24}$`, r.header.Get("X-Request-Id"))
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.do(t, "GET", "/v1/shards", "")
	b.do(t, "GET", "/v1/shards/secret-tenant-name", "")
	b.do(t, "GET", "/v1/no-such-route/another-secret", "")
	r := b.doAuth(t, "", "GET", "/metrics", "")
	require.Equal(t, 200, r.status)
	body := string(r.body)
	require.Contains(t, body, `silo_http_requests_total{method="GET",route="/v1/shards",status="200"} 1`)
	require.Contains(t, body, `silo_http_requests_total{method="GET",route="/v1/shards/:name",status="404"} 1`)
	require.Contains(t, body, `silo_http_requests_total{method="GET",route="unmatched",status="404"} 1`)
	require.Contains(t, body, `silo_http_request_duration_seconds_bucket{method="GET",route="/v1/shards",status="200",le=`)
	require.Contains(t, body, "go_goroutines")
	require.NotContains(t, body, "secret", "paths never become label values")
}

// The console's page is public and its headers strict; the API it calls
// still wants the token; a server without a console has no public /console.
func TestConsoleRoute(t *testing.T) {
	t.Parallel()
	b := setup(t, serverOpts{console: true})
	for _, path := range []string{"/console", "/console/", "/console/app.js"} {
		r, err := b.send("", "GET", path, "")
		require.NoError(t, err)
		require.Equal(t, 200, r.status, "%s: %s", path, r.body)
		require.Equal(t, console.Policy, r.header.Get("Content-Security-Policy"), path)
		require.Equal(t, "DENY", r.header.Get("X-Frame-Options"), path)
		require.NotEmpty(t, r.header.Get("X-Request-Id"), "the API's middleware sees it")
	}
	r, err := b.send("", "GET", "/console/nothing", "")
	require.NoError(t, err)
	require.Equal(t, 404, r.status)
	r, err = b.send("", "POST", "/console", "")
	require.NoError(t, err)
	require.Equal(t, 401, r.status, "only GET is public: %s", r.body)
	require.Equal(t, 401, b.doAuth(t, "", "GET", "/v1/shards", "").status, "the API still wants the token")

	r = b.doAuth(t, "", "GET", "/metrics", "")
	require.Contains(t, string(r.body), `silo_http_requests_total{method="GET",route="/console",status="200"} 1`)
	require.Contains(t, string(r.body), `silo_http_requests_total{method="GET",route="/console/*",status="200"} 2`)

	// Without a console, /console is a path like any unknown one.
	plain := setup(t)
	r, err = plain.send("", "GET", "/console", "")
	require.NoError(t, err)
	require.Equal(t, 401, r.status, "body: %s", r.body)
}
