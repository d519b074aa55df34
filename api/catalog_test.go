package api_test

import (
	"context"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

// ownCatalog is a catalog of the test's own, which it may freeze or stop,
// with the test binary's first shard as s1, and a provisioner over it.
type ownCatalog struct {
	*catalogtest.Own
	ctx    context.Context
	fleet  *pgtest.Fleet
	prov   *provisioner.Provisioner
	health *shardmap.CatalogHealth
	log    *slog.Logger
}

func newOwnCatalog(t *testing.T) *ownCatalog {
	t.Helper()
	o := &ownCatalog{fleet: pgtest.Start(t), log: slog.New(slog.NewJSONHandler(io.Discard, nil))}
	var cancel context.CancelFunc
	o.ctx, cancel = context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	o.Own = catalogtest.NewOwn(t, o.log)
	_, err := o.Store.CreateShard(o.ctx, silo.Shard{Name: "s1", DSN: o.fleet.Shards[0].DSN("postgres")})
	require.NoError(t, err)
	var eng *engine.Engine
	o.prov, eng = newProvisioner(t, o.Pool, o.Store, o.log)
	require.NoError(t, eng.Start(o.ctx))
	o.health, err = shardmap.NewCatalogHealth(shardmap.CatalogHealthConfig{Pool: o.Pool, Logger: o.log})
	require.NoError(t, err)
	require.NoError(t, o.health.Start(o.ctx))
	t.Cleanup(o.health.Stop)
	// Cleanups run last first: the catalog is back before anything else
	// stops, even when the test failed with it frozen.
	t.Cleanup(func() { _ = o.Resume() })
	return o
}

// serve serves an API server, with a router of its own, over the catalog;
// reg gets the metrics of both.
func (o *ownCatalog) serve(t *testing.T, keyCacheTTL time.Duration, reg *prometheus.Registry) *bundle {
	t.Helper()
	cfg := router.Config{Catalog: o.Pool, Store: o.Store, SecretKey: secretKey, CatalogHealth: o.health, Logger: o.log}
	if reg != nil {
		cfg.Registry = reg
	}
	rt, err := router.New(cfg)
	require.NoError(t, err)
	require.NoError(t, rt.Start(o.ctx))
	t.Cleanup(rt.Stop)
	acfg := api.Config{Catalog: o.Store, Provisioner: o.prov, Router: rt,
		CatalogHealth: o.health, KeyCacheTTL: keyCacheTTL, AdminToken: token, Logger: o.log}
	if reg != nil {
		acfg.Registry = reg
	}
	return serve(t, o.ctx, o.fleet, o.Store, acfg)
}

// requireUnavailable checks a 503 EUNAVAILABLE problem with Retry-After.
func requireUnavailable(t *testing.T, r response) {
	t.Helper()
	requireProblem(t, r, 503, silo.EUNAVAILABLE)
	secs, err := strconv.Atoi(r.header.Get("Retry-After"))
	require.NoError(t, err, "Retry-After: %q", r.header.Get("Retry-After"))
	require.GreaterOrEqual(t, secs, 1)
}

// metric reads one sample from GET /metrics.
func (b *bundle) metric(t *testing.T, sample string) float64 {
	t.Helper()
	r := b.do(t, "GET", "/metrics", "")
	require.Equal(t, 200, r.status)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindSubmatch(r.body)
	require.NotNil(t, m, "no %s in /metrics", sample)
	v, err := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, err)
	return v
}

// While the catalog is frozen or stopped, a tenant whose key and route the
// server holds is served over the data API, with its key and with the
// admin token; a key or tenant the server has not seen, and the control
// plane, get 503 with Retry-After, at once once the outage is known (within
// 5 s + slack). When the catalog is back, everything is served again,
// without a restart.
func TestDataAPICatalogOutage(t *testing.T) {
	t.Parallel()
	o := newOwnCatalog(t)
	reg := prometheus.NewRegistry()
	b := o.serve(t, time.Minute, reg)
	const detection = shardmap.DefaultCatalogProbeInterval + 2*shardmap.DefaultCatalogProbeTimeout
	create := func(id string) {
		t.Helper()
		r := b.do(t, "POST", "/v1/tenants?wait=30s", `{"id":"`+id+`","shard":"s1"}`)
		require.Equal(t, 201, r.status, "body: %s", r.body)
	}
	create("served")
	keyAuth := "Bearer " + b.createKey(t, "served", `{}`).Token
	require.Equal(t, 200, b.queryAuth(t, keyAuth, "served", "SELECT 1").status)
	require.Equal(t, 200, b.query(t, "served", "SELECT 1").status)
	require.Equal(t, 1.0, b.metric(t, "silo_catalog_up"))

	for i, fault := range []struct {
		name        string
		break_, fix func() error
	}{
		{"frozen (SIGSTOP)", o.Pause, o.Resume},
		{"stopped", func() error { return o.Stop(o.ctx) }, func() error { return o.Start(o.ctx) }},
	} {
		// A tenant and a key this server has not used.
		unseen := "unseen-" + strconv.Itoa(i)
		create(unseen)
		spareAuth := "Bearer " + b.createKey(t, "served", `{"name":"spare"}`).Token

		require.NoError(t, fault.break_(), fault.name)
		broke := time.Now()
		// The control plane answers 503, at once once the outage is known.
		var fastAfter time.Duration
		for fastAfter == 0 && time.Since(broke) < detection+3*time.Second {
			start := time.Now()
			requireUnavailable(t, b.do(t, "GET", "/v1/tenants/served", ""))
			if time.Since(start) < 500*time.Millisecond {
				fastAfter = time.Since(broke)
			}
		}
		require.NotZero(t, fastAfter, "%s: the control plane answers 503 at once within the detection time, and some slack", fault.name)
		t.Logf("%s: the control plane answers 503 at once after %v", fault.name, fastAfter.Round(10*time.Millisecond))
		require.Eventually(t, func() bool { return b.metric(t, "silo_catalog_up") == 0 },
			detection+3*time.Second-time.Since(broke), 50*time.Millisecond, "%s: the outage is known", fault.name)

		// What the server holds is served throughout, for longer than the
		// detection time in all.
		for n := 0; n < 10 || time.Since(broke) < detection+time.Second; n++ {
			require.Equal(t, 200, b.queryAuth(t, keyAuth, "served", "SELECT 1").status, fault.name)
			require.Equal(t, 200, b.query(t, "served", "SELECT 1").status, fault.name)
			time.Sleep(50 * time.Millisecond)
		}
		// What it does not hold is refused, at once.
		for _, call := range []func() response{
			func() response { return b.queryAuth(t, spareAuth, "served", "SELECT 1") },
			func() response { return b.query(t, unseen, "SELECT 1") },
			func() response { return b.do(t, "POST", "/v1/tenants", `{"id":"later"}`) },
			func() response { return b.do(t, "GET", "/v1/shards", "") },
		} {
			start := time.Now()
			requireUnavailable(t, call())
			require.Less(t, time.Since(start), time.Second, fault.name)
		}

		require.NoError(t, fault.fix(), fault.name)
		require.Eventually(t, func() bool {
			r, err := b.send("Bearer "+token, "GET", "/v1/tenants/served", "")
			return err == nil && r.status == 200
		}, 30*time.Second, 100*time.Millisecond, "%s: the control plane answers once the catalog is back", fault.name)
		require.Equal(t, 200, b.queryAuth(t, spareAuth, "served", "SELECT 1").status, fault.name)
		require.Equal(t, 200, b.query(t, unseen, "SELECT 1").status, fault.name)
		require.Equal(t, 200, b.do(t, "GET", "/v1/shards", "").status, fault.name)
		require.Equal(t, 1.0, b.metric(t, "silo_catalog_up"), fault.name)
	}
	require.Positive(t, b.metric(t, "silo_route_cache_outage_hits_total"))
	require.Positive(t, b.metric(t, `silo_key_checks_total{source="cache"}`))
}

// A key check is cached for the key cache lifetime: a key revoked through
// one server stops working there at once, and on another server within
// that lifetime.
func TestKeyCacheLifetime(t *testing.T) {
	t.Parallel()
	o := newOwnCatalog(t)
	const ttl = 3 * time.Second
	here, there := o.serve(t, time.Minute, nil), o.serve(t, ttl, nil)
	r := here.do(t, "POST", "/v1/tenants?wait=30s", `{"id":"keyed","shard":"s1"}`)
	require.Equal(t, 201, r.status, "body: %s", r.body)
	key := here.createKey(t, "keyed", `{}`)
	auth := "Bearer " + key.Token
	for _, b := range []*bundle{here, there} {
		for range 2 {
			require.Equal(t, 200, b.queryAuth(t, auth, "keyed", "SELECT 1").status)
		}
		require.Equal(t, 1.0, b.metric(t, `silo_key_checks_total{source="catalog"}`), "the first check asks the catalog")
		require.Equal(t, 1.0, b.metric(t, `silo_key_checks_total{source="cache"}`), "the second one, the cache")
	}

	require.Equal(t, 204, here.do(t, "DELETE", "/v1/tenants/keyed/keys/"+key.Id, "").status)
	revoked := time.Now()
	p := requireProblem(t, here.queryAuth(t, auth, "keyed", "SELECT 1"), 401, silo.EUNAUTHORIZED)
	require.Contains(t, *p.Detail, "revoked", "at once where it was revoked")
	require.Eventually(t, func() bool {
		r, err := there.send(auth, "POST", "/v1/tenants/keyed/query", `{"sql":"SELECT 1"}`)
		return err == nil && r.status == 401
	}, ttl+3*time.Second, 50*time.Millisecond, "within the key cache lifetime elsewhere")
	t.Logf("refused by the other server %v after the revocation", time.Since(revoked).Round(10*time.Millisecond))
}
