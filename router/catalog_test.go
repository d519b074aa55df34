package router_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

// newOwnCatalog returns a catalog on a cluster of the test's own, which the
// test may freeze or stop, with the test binary's first shard as s1.
func newOwnCatalog(t *testing.T, ctx context.Context) *catalogtest.Own {
	t.Helper()
	fleet := pgtest.Start(t)
	c := catalogtest.NewOwn(t, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	_, err := c.Store.CreateShard(ctx, silo.Shard{Name: "s1", DSN: fleet.Shards[0].DSN("postgres")})
	require.NoError(t, err)
	return c
}

// createTenants creates tenants with a provisioner that stops before the
// test goes on, so that nothing but the router uses the catalog.
func createTenants(t *testing.T, ctx context.Context, c *catalogtest.Own, ids ...string) {
	t.Helper()
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	eng, err := engine.New(engine.Config{Catalog: c.Pool, Store: c.Store, Logger: log})
	require.NoError(t, err)
	prov, err := provisioner.New(provisioner.Config{
		Catalog: c.Pool, Store: c.Store, Engine: eng, SecretKey: key, Logger: log,
		WarmPoolSize: -1, MaintenanceInterval: time.Hour,
	})
	require.NoError(t, err)
	require.NoError(t, eng.Start(ctx))
	for _, id := range ids {
		_, err := prov.Create(ctx, provisioner.CreateRequest{ID: id}, time.Minute)
		require.NoError(t, err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, eng.Stop(sctx))
	require.NoError(t, prov.Stop(sctx))
}

// While the catalog is frozen or stopped, a tenant whose route the router
// holds is served as usual; one it has not seen gets EUNAVAILABLE with a
// retry hint, at once once the outage is known (within 5 s + slack), not
// after a timeout. When the catalog is back, both are served, without a
// restart.
func TestCatalogOutage(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cat := newOwnCatalog(t, ctx)
	cached, uncached := newID("cached"), newID("uncached")
	createTenants(t, ctx, cat, cached, uncached)
	reg := prometheus.NewRegistry()
	r, err := router.New(router.Config{Catalog: cat.Pool, Store: cat.Store, SecretKey: key, Registry: reg,
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(r.Stop)
	const detection = shardmap.DefaultCatalogProbeInterval + 2*shardmap.DefaultCatalogProbeTimeout

	query := func(id string) error {
		qctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		return r.WithTenant(qctx, id, func(conn *pgx.Conn) error {
			_, err := conn.Exec(qctx, "INSERT INTO notes (title) VALUES ('x')")
			return err
		})
	}
	require.NoError(t, query(cached))
	require.Equal(t, 1.0, metricValue(t, reg, "silo_catalog_up"))

	for _, fault := range []struct {
		name        string
		break_, fix func() error
	}{
		{"frozen (SIGSTOP)", cat.Pause, cat.Resume},
		{"stopped", func() error { return cat.Stop(ctx) }, func() error { return cat.Start(ctx) }},
	} {
		require.NoError(t, fault.break_(), fault.name)
		broke := time.Now()
		// The uncached tenant is refused, at once once the outage is known.
		var refusedAfter time.Duration
		for time.Since(broke) < detection+3*time.Second {
			start := time.Now()
			err := query(uncached)
			requireCode(t, err, silo.EUNAVAILABLE)
			se, _ := errors.AsType[*silo.Error](err)
			if se != nil && se.RetryAfter > 0 && time.Since(start) < 500*time.Millisecond {
				refusedAfter = time.Since(broke)
				break
			}
		}
		require.NotZero(t, refusedAfter, "%s: an uncached tenant is refused at once within the detection time, and some slack", fault.name)
		t.Logf("%s: uncached tenants refused at once after %v", fault.name, refusedAfter.Round(10*time.Millisecond))
		require.Eventually(t, func() bool { return metricValue(t, reg, "silo_catalog_up") == 0 },
			detection+3*time.Second-time.Since(broke), 50*time.Millisecond, "%s: the outage is known", fault.name)
		// The cached one is served throughout, for longer than the
		// detection time in all.
		hits := metricValue(t, reg, "silo_route_cache_outage_hits_total")
		for n := 0; n < 10 || time.Since(broke) < detection+time.Second; n++ {
			require.NoError(t, query(cached), "%s: a tenant whose route is cached is served", fault.name)
			time.Sleep(50 * time.Millisecond)
		}
		require.Greater(t, metricValue(t, reg, "silo_route_cache_outage_hits_total"), hits, fault.name)

		require.NoError(t, fault.fix(), fault.name)
		require.Eventually(t, func() bool { return query(uncached) == nil }, 30*time.Second, 100*time.Millisecond,
			"%s: served once the catalog is back", fault.name)
		require.NoError(t, query(cached), fault.name)
		require.Equal(t, 1.0, metricValue(t, reg, "silo_catalog_up"), fault.name)
		// The next fault finds the uncached tenant unknown again.
		if fault.name == "frozen (SIGSTOP)" {
			uncached = newID("uncached")
			createTenants(t, ctx, cat, uncached)
		}
	}
}
