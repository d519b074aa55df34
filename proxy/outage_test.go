package proxy_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/router"
)

// ownShard starts a PostgreSQL cluster of the test's own and registers it
// as shard name, so the test may freeze or stop it; it returns the cluster
// and its config, to start it again. t.Cleanup resumes and stops it.
func (b *bundle) ownShard(t *testing.T, name string) (*pgcluster.Cluster, pgcluster.Config) {
	t.Helper()
	dir, err := os.MkdirTemp("", "proxy-shard-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg := pgcluster.Config{Dir: filepath.Join(dir, name), Fast: true}
	c, err := pgcluster.Start(b.ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Resume(); _ = c.Stop(context.Background()) })
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: name, DSN: c.DSN("postgres")})
	require.NoError(t, err)
	return c, cfg
}

// sessionLost reports whether err is what a client whose transaction was
// open on a shard that went down is told: 57P03 (cannot connect now) or a
// connection failure (class 08) when the router cut it off, or, from a
// shard that shut down, the server's own FATAL 57P01, passed through.
func sessionLost(err error) bool {
	code := pgCode(err)
	return code == "57P03" || code == "57P01" || strings.HasPrefix(code, "08")
}

// A shard that hangs (SIGSTOP) or stops: its tenants' clients get a clear
// error within the router's detection time (5 s by default), 57P03 for an
// idle client (which stays connected) and for a new connection (a FATAL,
// then at once); a client whose transaction was open on it loses its
// session (see sessionLost). A client of a tenant on another shard
// sees nothing: its queries keep succeeding, without a stall. Once the
// shard is back, its tenants are served again.
func TestShardOutage(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	const detection = router.DefaultProbeInterval + 2*router.DefaultProbeTimeout
	const slack = 2 * time.Second // a busy machine: the test runs beside others
	shard, cfg := b.ownShard(t, "s3")
	fragile, fragileKey := b.tenant(t, "fragile", "s3")
	steady, steadyKey := b.tenant(t, "steady", "s1")
	ctx := b.ctx

	// The other shard's client queries throughout.
	steadyConn, err := pgx.Connect(ctx, b.dsn(steady, steadyKey, steady))
	require.NoError(t, err)
	defer steadyConn.Close(context.Background())
	stop := make(chan struct{})
	var steadyOK atomic.Int64
	var steadyErrs []error
	var slowest time.Duration
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			start := time.Now()
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := steadyConn.Exec(qctx, "INSERT INTO notes (title) VALUES ('steady')")
			cancel()
			if err != nil {
				steadyErrs = append(steadyErrs, err)
				continue
			}
			steadyOK.Add(1)
			slowest = max(slowest, time.Since(start))
		}
	})
	defer func() { close(stop); wg.Wait() }()

	for _, fault := range []struct {
		name        string
		break_, fix func() error
	}{
		{"hung (SIGSTOP)", shard.Pause, shard.Resume},
		{"stopped", func() error { return shard.Stop(ctx) }, func() error {
			var err error
			shard, err = pgcluster.Start(ctx, cfg)
			return err
		}},
	} {
		idle, err := pgx.Connect(ctx, b.dsn(fragile, fragileKey, fragile))
		require.NoError(t, err, fault.name)
		inTx, err := pgx.Connect(ctx, b.dsn(fragile, fragileKey, fragile))
		require.NoError(t, err, fault.name)
		_, err = idle.Exec(ctx, "SELECT 1")
		require.NoError(t, err, fault.name)
		tx, err := inTx.Begin(ctx)
		require.NoError(t, err, fault.name)
		_, err = tx.Exec(ctx, "INSERT INTO notes (title) VALUES ('lost')")
		require.NoError(t, err, fault.name)

		require.NoError(t, fault.break_(), fault.name)
		broke := time.Now()
		// A login during the detection time: refused, or let in (a session
		// of the pool stands in for the shard without a word to it) with
		// its first statement failing; either within the detection time.
		early := make(chan error, 1)
		go func() {
			conn, err := pgx.Connect(ctx, b.dsn(fragile, fragileKey, fragile))
			if err == nil {
				_, err = conn.Exec(ctx, "SELECT 1")
				conn.Close(context.Background())
			}
			early <- err
		}()

		// The idle client's statement: an ERROR, within the detection
		// time; the client stays connected.
		_, err = idle.Exec(ctx, "INSERT INTO notes (title) VALUES ('idle')")
		took := time.Since(broke)
		require.Equal(t, "57P03", pgCode(err), "%s: %v", fault.name, err)
		require.Less(t, took, detection+slack, fault.name)
		require.False(t, idle.IsClosed(), fault.name)
		t.Logf("%s: an idle client's statement failed after %v: %v", fault.name, took.Round(10*time.Millisecond), err)

		// The transaction's next statement: its session is lost.
		_, err = tx.Exec(ctx, "INSERT INTO notes (title) VALUES ('lost too')")
		require.True(t, sessionLost(err), "%s: %v", fault.name, err)
		t.Logf("%s: a client in a transaction: %v", fault.name, err)
		require.Less(t, time.Since(broke), detection+slack, fault.name)
		require.True(t, inTx.IsClosed(), "%s: the server ended the session", fault.name)

		select {
		case err := <-early:
			require.Equal(t, "57P03", pgCode(err), "%s: a login as the shard went: %v", fault.name, err)
			require.Less(t, time.Since(broke), detection+slack, fault.name)
		case <-time.After(detection + slack):
			t.Fatalf("%s: a login as the shard went still waits", fault.name)
		}

		// Now that the shard is known to be down, at once.
		start := time.Now()
		_, err = idle.Exec(ctx, "SELECT 1")
		require.Equal(t, "57P03", pgCode(err), "%s: %v", fault.name, err)
		require.Less(t, time.Since(start), time.Second, fault.name)
		start = time.Now()
		_, err = pgx.Connect(ctx, b.dsn(fragile, fragileKey, fragile))
		require.Equal(t, "57P03", pgCode(err), "%s: a new connection: %v", fault.name, err)
		require.Contains(t, err.Error(), "FATAL", fault.name)
		require.Contains(t, err.Error(), "unavailable", fault.name)
		require.Less(t, time.Since(start), time.Second, fault.name)
		t.Logf("%s: a new connection refused in %v: %v", fault.name, time.Since(start).Round(time.Millisecond), err)

		require.NoError(t, fault.fix(), fault.name)
		require.Eventually(t, func() bool {
			_, err := idle.Exec(ctx, "INSERT INTO notes (title) VALUES ('after')")
			return err == nil
		}, 20*time.Second, 100*time.Millisecond, "%s: the idle client is served again once the shard is back", fault.name)
		again, err := pgx.Connect(ctx, b.dsn(fragile, fragileKey, fragile))
		require.NoError(t, err, "%s: and a new one", fault.name)
		var lost int
		require.NoError(t, again.QueryRow(ctx, "SELECT count(*) FROM notes WHERE title LIKE 'lost%'").Scan(&lost))
		require.Zero(t, lost, "%s: the open transaction was rolled back", fault.name)
		again.Close(ctx)
		idle.Close(ctx)
		inTx.Close(ctx)
	}

	close(stop)
	wg.Wait()
	stop = make(chan struct{}) // for the deferred close
	require.Empty(t, steadyErrs, "the other shard's client saw no error")
	require.Positive(t, steadyOK.Load())
	require.Less(t, slowest, time.Second, "nor a stall")
	t.Logf("other shard: %d statements, the slowest %v", steadyOK.Load(), slowest.Round(time.Millisecond))
}
