package api_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
)

// With a metrics token, /metrics answers only that token: not a request
// without one, not a wrong one, not the admin token; and the metrics token
// opens nothing else. Without one, /metrics stays open.
func TestHostileMetricsToken(t *testing.T) {
	t.Parallel()
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	pool, store := catalogtest.New(t, log)
	prov, eng := newProvisioner(t, pool, store, log)
	require.NoError(t, eng.Start(ctx))
	const metricsToken = "metrics-token-0123456789"

	serve := func(cfg api.Config) *bundle {
		cfg.Catalog, cfg.Provisioner, cfg.AdminToken, cfg.Logger = store, prov, token, log
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
	guarded := serve(api.Config{MetricsToken: metricsToken})
	for _, auth := range []string{
		"", "Bearer ", "Bearer " + token, "Bearer wrong-token-0123456789", "Bearer " + metricsToken + "x",
		"Basic " + metricsToken, metricsToken, "bearer " + metricsToken,
	} {
		r := guarded.doAuth(t, auth, "GET", "/metrics", "")
		require.Equal(t, 401, r.status, "auth %q", auth)
		require.Equal(t, api.ProblemCode(silo.EUNAUTHORIZED), r.problem(t).Code)
		require.Contains(t, r.header.Get("WWW-Authenticate"), "Bearer")
		require.NotContains(t, string(r.body), "silo_http_requests_total")
	}
	r := guarded.doAuth(t, "Bearer "+metricsToken, "GET", "/metrics", "")
	require.Equal(t, 200, r.status)
	require.Contains(t, string(r.body), "silo_http_requests_total")
	require.Contains(t, string(r.body), `status="401"`, "refused scrapes are counted")

	// The metrics token is no admin token, and the other public routes stay
	// public.
	r = guarded.doAuth(t, "Bearer "+metricsToken, "GET", "/v1/shards", "")
	require.Equal(t, 401, r.status)
	require.Equal(t, 200, guarded.doAuth(t, "", "GET", "/healthz", "").status)

	open := serve(api.Config{})
	r = open.doAuth(t, "", "GET", "/metrics", "")
	require.Equal(t, 200, r.status)
	require.Contains(t, string(r.body), "go_goroutines")

	_, err := api.New(api.Config{Catalog: store, Provisioner: prov, AdminToken: token, MetricsToken: "short"})
	require.ErrorContains(t, err, "metrics token must be at least 16 characters")
}
