package router_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var key = []byte("0123456789abcdef0123456789abcdef")

type bundle struct {
	ctx   context.Context
	pool  *pgxpool.Pool
	store *shardmap.Store
	prov  *provisioner.Provisioner
	fleet *pgtest.Fleet
}

// setup returns a catalog with both test shards, a running provisioner
// (no warm pool), and a way to make routers over it.
func setup(t *testing.T) *bundle {
	t.Helper()
	fleet := pgtest.Start(t)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	pool, store := catalogtest.New(t, log)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	for i, name := range []string{"s1", "s2"} {
		_, err := store.CreateShard(ctx, silo.Shard{Name: name, DSN: fleet.Shards[i].DSN("postgres")})
		require.NoError(t, err)
	}
	eng := catalogtest.NewEngine(t, pool, store, log, engine.Config{})
	prov, err := provisioner.New(provisioner.Config{
		Catalog: pool, Store: store, Engine: eng, SecretKey: key, Logger: log,
		WarmPoolSize: -1, MaintenanceInterval: time.Hour,
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = eng.Stop(sctx)
		_ = prov.Stop(sctx)
	})
	require.NoError(t, eng.Start(ctx))
	return &bundle{ctx: ctx, pool: pool, store: store, prov: prov, fleet: fleet}
}

func (b *bundle) router(t *testing.T, cfg router.Config) *router.Router {
	t.Helper()
	cfg.Catalog, cfg.Store, cfg.SecretKey = b.pool, b.store, key
	cfg.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil))
	r, err := router.New(cfg)
	require.NoError(t, err)
	require.NoError(t, r.Start(b.ctx))
	t.Cleanup(r.Stop)
	return r
}

func (b *bundle) create(t *testing.T, id string) *silo.Tenant {
	t.Helper()
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: id}, time.Minute)
	require.NoError(t, err)
	return res.Tenant
}

// databases returns the names of the tenants' databases, from the catalog.
func (b *bundle) databases(t *testing.T, ids []string) []string {
	t.Helper()
	var out []string
	for _, id := range ids {
		tn, err := b.store.GetTenant(b.ctx, id)
		require.NoError(t, err)
		out = append(out, tn.Database)
	}
	return out
}

var seq atomic.Int64

func newID(prefix string) string { return fmt.Sprintf("%s-%d", prefix, seq.Add(1)) }

func requireCode(t *testing.T, err error, code string) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, silo.ErrorCode(err), "error: %v", err)
}

func TestWithTenantIsolation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.router(t, router.Config{})
	a, c := b.create(t, newID("iso")), b.create(t, newID("iso"))

	err := r.WithTenant(b.ctx, a.ID, func(conn *pgx.Conn) error {
		var user, db string
		if err := conn.QueryRow(b.ctx, "SELECT current_user, current_database()").Scan(&user, &db); err != nil {
			return err
		}
		require.Equal(t, a.Database, user, "the tenant's own role")
		require.Equal(t, a.Database, db)
		_, err := conn.Exec(b.ctx, "INSERT INTO notes (title) VALUES ($1)", "only a's")
		return err
	})
	require.NoError(t, err)
	err = r.WithTenant(b.ctx, c.ID, func(conn *pgx.Conn) error {
		var n int
		require.NoError(t, conn.QueryRow(b.ctx, "SELECT count(*) FROM notes").Scan(&n))
		require.Zero(t, n, "tenants never see each other's data")
		return nil
	})
	require.NoError(t, err)

	// The transaction variant commits on nil and rolls back on error.
	boom := errors.New("boom")
	err = r.WithTenantTx(b.ctx, a.ID, func(tx pgx.Tx) error {
		_, err := tx.Exec(b.ctx, "INSERT INTO notes (title) VALUES ('rolled back')")
		require.NoError(t, err)
		return boom
	})
	require.ErrorIs(t, err, boom)
	require.NoError(t, r.WithTenantTx(b.ctx, a.ID, func(tx pgx.Tx) error {
		_, err := tx.Exec(b.ctx, "INSERT INTO notes (title) VALUES ('kept')")
		return err
	}))
	require.NoError(t, r.WithTenant(b.ctx, a.ID, func(conn *pgx.Conn) error {
		var titles []string
		rows, _ := conn.Query(b.ctx, "SELECT title FROM notes ORDER BY id")
		titles, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.Equal(t, []string{"only a's", "kept"}, titles)
		return err
	}))

	// A transaction left open by fn does not leak into the next caller.
	require.NoError(t, r.WithTenant(b.ctx, a.ID, func(conn *pgx.Conn) error {
		_, err := conn.Exec(b.ctx, "BEGIN; INSERT INTO notes (title) VALUES ('abandoned')")
		return err
	}))
	require.NoError(t, r.WithTenant(b.ctx, a.ID, func(conn *pgx.Conn) error {
		var n int
		require.NoError(t, conn.QueryRow(b.ctx, "SELECT count(*) FROM notes WHERE title = 'abandoned'").Scan(&n))
		require.Zero(t, n)
		return nil
	}))
}

func TestRefusalsAndInvalidation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r1 := b.router(t, router.Config{})
	r2 := b.router(t, router.Config{}) // another server
	noop := func(*pgx.Conn) error { return nil }

	// No negative-cache trap: a tenant asked for before it exists is found
	// as soon as it is created.
	id := newID("later")
	requireCode(t, r1.WithTenant(b.ctx, id, noop), silo.ENOTFOUND)
	b.create(t, id)
	require.NoError(t, r1.WithTenant(b.ctx, id, noop))
	require.NoError(t, r2.WithTenant(b.ctx, id, noop))

	// A suspension reaches every router within a second, through NOTIFY,
	// and their pooled connections go with it.
	_, err := b.prov.Suspend(b.ctx, id, time.Minute)
	require.NoError(t, err)
	for _, r := range []*router.Router{r1, r2} {
		require.Eventually(t, func() bool {
			return silo.ErrorCode(r.WithTenant(b.ctx, id, noop)) == silo.ESUSPENDED
		}, time.Second, 10*time.Millisecond)
	}
	_, err = b.prov.Resume(b.ctx, id, time.Minute)
	require.NoError(t, err)
	for _, r := range []*router.Router{r1, r2} {
		require.Eventually(t, func() bool { return r.WithTenant(b.ctx, id, noop) == nil }, time.Second, 10*time.Millisecond)
	}
	_, err = b.prov.Delete(b.ctx, id, false, time.Minute)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return silo.ErrorCode(r1.WithTenant(b.ctx, id, noop)) == silo.ENOTFOUND
	}, time.Second, 10*time.Millisecond, "deleted tenants are gone for their users")
}

// With a budget of one connection, two tenants take turns: each turn
// evicts the other's connection, and the new one may open only once the
// old backend is gone from the shard. Each session leaves temporary tables
// behind, so that its backend takes its time to exit.
func TestBudgetEvictionWaitsForBackend(t *testing.T) {
	t.Parallel()
	b := setup(t)
	prefix := newID("evict")
	ids := []string{prefix + "-a", prefix + "-b"}
	for _, id := range ids {
		_, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: id, Shard: "s1"}, time.Minute)
		require.NoError(t, err)
	}
	r := b.router(t, router.Config{ShardBudget: 1, TenantMaxConns: 1, AcquireTimeout: 10 * time.Second})
	dbs := b.databases(t, ids)
	for i := range 10 {
		id := ids[i%2]
		require.NoError(t, r.WithTenant(b.ctx, id, func(conn *pgx.Conn) error {
			var n int
			if err := conn.QueryRow(b.ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1)`, dbs).Scan(&n); err != nil {
				return err
			}
			require.Equal(t, 1, n, "turn %d: the shard holds the evicted connection's backend too", i)
			_, err := conn.Exec(b.ctx, `DO $$ BEGIN
				FOR i IN 1..200 LOOP EXECUTE format('CREATE TEMP TABLE t%s (x int)', i); END LOOP;
				END $$`)
			return err
		}))
	}
}

// 500 tenants on 2 shards with a budget of 20 connections per shard, under
// concurrent load on all of them: no shard ever sees more than 20 of the
// router's connections, and no query fails.
func TestConnectionBudget(t *testing.T) {
	t.Parallel() // it counts only its own tenants' connections
	b := setup(t)
	const tenants, budget, workers, perWorker = 500, 20, 48, 40
	start := time.Now()
	prefix := newID("budget")
	ids := make([]string, tenants)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			b.create(t, ids[i])
		})
	}
	wg.Wait()
	t.Logf("created %d tenants in %v", tenants, time.Since(start))
	start = time.Now()
	r := b.router(t, router.Config{ShardBudget: budget, TenantMaxConns: 4, AcquireTimeout: 30 * time.Second})

	// Sample each shard's connections of these tenants while the load runs.
	dbs := b.databases(t, ids)
	var peak [2]atomic.Int64
	stopSampling := make(chan struct{})
	var sampler sync.WaitGroup
	for i := range 2 {
		sampler.Go(func() {
			conn, err := pgx.Connect(b.ctx, b.fleet.Shards[i].DSN("postgres"))
			require.NoError(t, err)
			defer conn.Close(context.Background())
			for {
				var n int64
				if err := conn.QueryRow(b.ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1)`, dbs).Scan(&n); err == nil && n > peak[i].Load() {
					peak[i].Store(n)
				}
				select {
				case <-stopSampling:
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
		})
	}

	var failures atomic.Int64
	var firstErr atomic.Value
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range perWorker {
				id := ids[rng.IntN(tenants)]
				err := r.WithTenant(b.ctx, id, func(conn *pgx.Conn) error {
					_, err := conn.Exec(b.ctx, "INSERT INTO notes (title) VALUES ($1)", id)
					return err
				})
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		})
	}
	wg.Wait()
	close(stopSampling)
	sampler.Wait()
	t.Logf("%d queries in %v", workers*perWorker, time.Since(start))
	require.Zero(t, failures.Load(), "first error: %v", firstErr.Load())
	t.Logf("peak connections: shard 1 %d, shard 2 %d (budget %d each)", peak[0].Load(), peak[1].Load(), budget)
	for i := range 2 {
		require.LessOrEqual(t, peak[i].Load(), int64(budget))
		require.Positive(t, peak[i].Load())
	}
	for _, id := range ids[:50] {
		require.NoError(t, r.WithTenant(b.ctx, id, func(conn *pgx.Conn) error {
			var n int
			err := conn.QueryRow(b.ctx, "SELECT count(*) FROM notes WHERE title <> $1", id).Scan(&n)
			require.Zero(t, n, "each tenant holds only its own rows")
			return err
		}))
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	reg := prometheus.NewRegistry()
	// The tenant first: the catalog's notices of its creation would reach
	// a router already listening after its first request had cached the
	// route, and drop it (a miss the counts below do not expect).
	tn := b.create(t, newID("metrics"))
	r := b.router(t, router.Config{Registry: reg})
	for range 3 {
		require.NoError(t, r.WithTenant(b.ctx, tn.ID, func(*pgx.Conn) error { return nil }))
	}
	requireCode(t, r.WithTenant(b.ctx, "nobody-here", func(*pgx.Conn) error { return nil }), silo.ENOTFOUND)

	families, err := reg.Gather()
	require.NoError(t, err)
	values := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				require.NotContains(t, []string{"tenant", "tenant_id", "id"}, l.GetName(), "no tenant ids as label values")
				require.NotEqual(t, tn.ID, l.GetValue())
				key += "/" + l.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				values[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				values[key] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				values[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	require.Equal(t, 2.0, values["silo_route_cache_hits_total"])
	require.Equal(t, 2.0, values["silo_route_cache_misses_total"]) // the tenant once, the unknown id once
	require.Equal(t, 3.0, values["silo_query_duration_seconds/ok/"+tn.Shard])
	require.Equal(t, 1.0, values["silo_pool_connections_idle/"+tn.Shard])
	require.Equal(t, 0.0, values["silo_pool_connections_in_use/"+tn.Shard])
}

// Stopping a router (and the engine and provisioner beside it) leaves no
// goroutine behind: its listener, prober and pools end with it. Not
// parallel: it counts goroutines.
func TestStopLeaksNothing(t *testing.T) {
	pgtest.Start(t)
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) }) // last: after the catalog pool closes
	b := setup(t)
	r := b.router(t, router.Config{ProbeInterval: 100 * time.Millisecond})
	tn := b.create(t, newID("leak"))
	for range 3 {
		require.NoError(t, r.WithTenant(b.ctx, tn.ID, func(c *pgx.Conn) error {
			_, err := c.Exec(b.ctx, `INSERT INTO notes (title) VALUES ('x')`)
			return err
		}))
	}
}
