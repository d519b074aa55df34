package router_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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
	// Requests already inside a hung server wait out their own deadline; the
	// checks below use short ones, as a client would.
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
