package router_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/router"
)

// A shard that hangs (SIGSTOP) or stops fails fast for its own tenants
// within a few seconds, and the other shards' tenants see no errors; when
// it is back, its tenants are served again. The shard is a cluster of this
// test's own, so freezing it disturbs no other test.
func TestShardFailureIsolation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dir, err := os.MkdirTemp("", "router-shard-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg := pgcluster.Config{Dir: filepath.Join(dir, "s3"), Fast: true}
	s3, err := pgcluster.Start(b.ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s3.Resume(); _ = s3.Stop(context.Background()) })
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: "s3", DSN: s3.DSN("postgres")})
	require.NoError(t, err)
	fragile, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("fragile"), Shard: "s3"}, time.Minute)
	require.NoError(t, err)
	steady, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("steady"), Shard: "s1"}, time.Minute)
	require.NoError(t, err)

	r := b.router(t, router.Config{ProbeInterval: 200 * time.Millisecond, BreakerCooldown: time.Second, ConnectTimeout: time.Second})
	// The checks use short deadlines, as a client would (TestHungShardLetsGo
	// shows what becomes of requests already inside a hung server).
	query := func(id string) error {
		ctx, cancel := context.WithTimeout(b.ctx, time.Second)
		defer cancel()
		return r.WithTenant(ctx, id, func(conn *pgx.Conn) error {
			_, err := conn.Exec(ctx, "INSERT INTO notes (title) VALUES ('x')")
			return err
		})
	}
	require.NoError(t, query(fragile.Tenant.ID))

	// The other shard's tenant is queried throughout: no error, no stall.
	stop := make(chan struct{})
	var steadyErrs, steadyOK atomic.Int64
	var slowest atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			if err := query(steady.Tenant.ID); err != nil {
				steadyErrs.Add(1)
			} else {
				steadyOK.Add(1)
			}
			if d := time.Since(start).Milliseconds(); d > slowest.Load() {
				slowest.Store(d)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})

	for _, fault := range []struct {
		name        string
		break_, fix func() error
	}{
		{"hung (SIGSTOP)", s3.Pause, s3.Resume},
		{"stopped", func() error { return s3.Stop(b.ctx) }, func() error {
			var err error
			s3, err = pgcluster.Start(b.ctx, cfg)
			return err
		}},
	} {
		require.NoError(t, fault.break_(), fault.name)
		broke := time.Now()
		// Within a few seconds the shard's tenants are refused at once,
		// with a hint of when to retry.
		require.Eventually(t, func() bool {
			start := time.Now()
			err := query(fragile.Tenant.ID)
			var se *silo.Error
			ok := silo.ErrorCode(err) == silo.EUNAVAILABLE && time.Since(start) < 200*time.Millisecond
			if ok {
				se, _ = err.(*silo.Error)
			}
			return ok && se != nil && se.RetryAfter > 0
		}, 8*time.Second, 50*time.Millisecond, "%s: the shard's tenants fail fast", fault.name)
		t.Logf("%s: failing fast after %v", fault.name, time.Since(broke).Round(10*time.Millisecond))

		require.NoError(t, fault.fix(), fault.name)
		require.Eventually(t, func() bool { return query(fragile.Tenant.ID) == nil },
			15*time.Second, 100*time.Millisecond, "%s: served again once the shard is back", fault.name)
	}
	close(stop)
	wg.Wait()
	require.Zero(t, steadyErrs.Load(), "tenants on other shards see no errors")
	require.Positive(t, steadyOK.Load())
	t.Logf("other shard: %d queries, slowest %d ms", steadyOK.Load(), slowest.Load())
	require.Less(t, slowest.Load(), int64(1000), "and no stall")
}

// ownShard starts a PostgreSQL cluster of the test's own and registers it
// as shard name, so the test may freeze or stop it; t.Cleanup resumes and
// stops it.
func (b *bundle) ownShard(t *testing.T, name string) *pgcluster.Cluster {
	t.Helper()
	dir, err := os.MkdirTemp("", "router-shard-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	c, err := pgcluster.Start(b.ctx, pgcluster.Config{Dir: filepath.Join(dir, name), Fast: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Resume(); _ = c.Stop(context.Background()) })
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: name, DSN: c.DSN("postgres")})
	require.NoError(t, err)
	return c
}

// waitActive waits until n sessions of database db on cluster c run a
// statement that contains text.
func waitActive(t *testing.T, ctx context.Context, c *pgcluster.Cluster, db, text string, n int) {
	t.Helper()
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	require.Eventually(t, func() bool {
		var got int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = $1 AND state = 'active' AND strpos(query, $2) > 0`, db, text).Scan(&got)
		return err == nil && got == n
	}, 30*time.Second, 20*time.Millisecond, "%d sessions running %q", n, text)
}

// A shard that hangs lets go of the requests it holds: when its breaker
// opens, within the default detection time of 5 s, a statement and a
// transaction in flight on it end with EUNAVAILABLE and a retry hint,
// instead of waiting out their own deadline; their connections are not
// reused. Once the shard is back, its tenant is served again.
func TestHungShardLetsGo(t *testing.T) {
	t.Parallel()
	b := setup(t)
	shard := b.ownShard(t, "hung")
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("held"), Shard: "hung"}, time.Minute)
	require.NoError(t, err)
	tn := res.Tenant
	r := b.router(t, router.Config{})
	const detection = router.DefaultProbeInterval + 2*router.DefaultProbeTimeout
	require.Equal(t, 5*time.Second, detection)
	insert := func(ctx context.Context, title string) error {
		return r.WithTenant(ctx, tn.ID, func(conn *pgx.Conn) error {
			_, err := conn.Exec(ctx, "INSERT INTO notes (title) VALUES ($1)", title)
			return err
		})
	}
	require.NoError(t, insert(b.ctx, "before"))

	// The work's own deadline is far off: only the breaker can end it soon.
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Minute)
	defer cancel()
	type outcome struct {
		name string
		err  error
		at   time.Time
	}
	done := make(chan outcome, 2)
	go func() {
		err := r.WithTenant(ctx, tn.ID, func(conn *pgx.Conn) error {
			_, err := conn.Exec(ctx, "SELECT pg_sleep(60)")
			return err
		})
		done <- outcome{"statement", err, time.Now()}
	}()
	go func() {
		err := r.WithTenantTx(ctx, tn.ID, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "INSERT INTO notes (title) VALUES ('cut off')"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "SELECT pg_sleep(60)")
			return err
		})
		done <- outcome{"transaction", err, time.Now()}
	}()
	waitActive(t, b.ctx, shard, tn.Database, "pg_sleep(60)", 2)

	require.NoError(t, shard.Pause())
	frozen := time.Now()
	for range 2 {
		select {
		case o := <-done:
			took := o.at.Sub(frozen)
			t.Logf("%s let go after %v", o.name, took.Round(10*time.Millisecond))
			requireCode(t, o.err, silo.EUNAVAILABLE)
			se, ok := errors.AsType[*silo.Error](o.err)
			require.True(t, ok)
			require.Positive(t, se.RetryAfter, o.name)
			require.Contains(t, se.Message, "cut off", o.name)
			require.Less(t, took, detection+3*time.Second, "%s: within the detection time, and some slack", o.name)
		case <-time.After(time.Minute):
			t.Fatal("work in flight on the hung shard still waits")
		}
	}
	// New requests are refused at once.
	start := time.Now()
	requireCode(t, insert(ctx, "refused"), silo.EUNAVAILABLE)
	require.Less(t, time.Since(start), time.Second)

	require.NoError(t, shard.Resume())
	require.Eventually(t, func() bool { return insert(ctx, "after") == nil },
		20*time.Second, 100*time.Millisecond, "served again once the shard is back")
	// Every connection of the pool works: the ones cut off were discarded.
	for i := range 8 {
		require.NoError(t, insert(ctx, "again"), "query %d", i)
	}
	var cutOff int
	require.NoError(t, r.WithTenant(ctx, tn.ID, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "SELECT count(*) FROM notes WHERE title = 'cut off'").Scan(&cutOff)
	}))
	require.Zero(t, cutOff, "the open transaction was rolled back")
}

// silo_shard_breaker_open reads 1 while a shard's breaker is open and 0
// once the shard answers again; the other shard's stays 0 throughout.
func TestBreakerOpenMetric(t *testing.T) {
	t.Parallel()
	b := setup(t)
	shard := b.ownShard(t, "flaky")
	fragile, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("flaky"), Shard: "flaky"}, time.Minute)
	require.NoError(t, err)
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("steady"), Shard: "s1"}, time.Minute)
	require.NoError(t, err)
	steady := res.Tenant
	reg := prometheus.NewRegistry()
	r := b.router(t, router.Config{Registry: reg, ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 300 * time.Millisecond,
		BreakerCooldown: time.Second})
	for _, id := range []string{fragile.Tenant.ID, steady.ID} {
		require.NoError(t, r.WithTenant(b.ctx, id, func(*pgx.Conn) error { return nil }))
	}
	require.Equal(t, map[string]float64{"flaky": 0, "s1": 0}, shardGauge(reg, "silo_shard_breaker_open"))

	require.NoError(t, shard.Pause())
	require.Eventually(t, func() bool { return shardGauge(reg, "silo_shard_breaker_open")["flaky"] == 1 },
		10*time.Second, 50*time.Millisecond, "the breaker opens")
	require.Equal(t, 0.0, shardGauge(reg, "silo_shard_breaker_open")["s1"], "the other shard's stays closed")

	require.NoError(t, shard.Resume())
	require.Eventually(t, func() bool {
		v, ok := shardGauge(reg, "silo_shard_breaker_open")["flaky"]
		return ok && v == 0
	}, 15*time.Second, 50*time.Millisecond, "the breaker closes once the shard answers")
	require.NoError(t, r.WithTenant(b.ctx, fragile.Tenant.ID, func(*pgx.Conn) error { return nil }))
}

// shardGauge returns the values of gauge name by shard, gathered from reg;
// nil when the registry fails. It fails no test: require.Eventually calls
// it on a goroutine of its own.
func shardGauge(reg *prometheus.Registry, name string) map[string]float64 {
	families, err := reg.Gather()
	if err != nil {
		return nil
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "shard" {
					out[l.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}
