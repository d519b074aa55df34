package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/rebalancer"
)

// pgbenchPath returns the pgbench beside the PostgreSQL server binaries,
// or on PATH, or skips the test.
func pgbenchPath(t *testing.T) string {
	t.Helper()
	if binDir, err := pgcluster.FindBinDir(); err == nil {
		if p := filepath.Join(binDir, "pgbench"); isFile(p) {
			return p
		}
	}
	p, err := exec.LookPath("pgbench")
	if err != nil {
		t.Skip("no pgbench beside the PostgreSQL server binaries or on PATH")
	}
	return p
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// benchRun is one pgbench run's outcome.
type benchRun struct {
	out       string
	err       error // the exit status
	processed int64 // "number of transactions actually processed"
	failed    int64 // "number of failed transactions"
	aborted   bool  // a client aborted
}

var (
	processedRE = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	failedRE    = regexp.MustCompile(`number of failed transactions: (\d+)`)
)

// pgbench runs the pgbench binary with args against dsn (a libpq URL), up
// to timeout.
func pgbench(ctx context.Context, bin, dsn string, timeout time.Duration, args ...string) benchRun {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, dsn)...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	r := benchRun{err: cmd.Run()}
	r.out = out.String()
	if m := processedRE.FindStringSubmatch(r.out); m != nil {
		r.processed, _ = strconv.ParseInt(m[1], 10, 64)
	} else {
		r.processed = -1
	}
	if m := failedRE.FindStringSubmatch(r.out); m != nil {
		r.failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	r.aborted = bytes.Contains(out.Bytes(), []byte("aborted"))
	return r
}

// benchChain runs pgbench with args against dsn, one short run after
// another (each its own clients, logging in anew), until done is closed
// and a run has started since; it returns every run.
func benchChain(ctx context.Context, bin, dsn string, done <-chan struct{}, args ...string) []benchRun {
	const each = 4 * time.Second
	var runs []benchRun
	for {
		finished := false
		select {
		case <-done:
			finished = true
		default:
		}
		runs = append(runs, pgbench(ctx, bin, dsn, each+time.Minute, append(args, "-T", fmt.Sprint(each.Seconds()))...))
		if finished || ctx.Err() != nil {
			return runs
		}
	}
}

// TestMoveUnderPgbench moves a tenant live to the other shard while
// pgbench (libpq) runs through the endpoint: the TPC-B script with
// prepared statements and the select-only script with the simple
// protocol, 8 clients each (a thread each: pgbench prepares a client's
// statements with blocking calls, which would hold up the other clients
// of its thread while they sit in a transaction, more clients than the
// tenant's connection cap). Short runs follow one another until the move
// is over, so that clients also log in during it. No transaction fails
// and no client aborts: transactions in progress finish on the old shard,
// new ones are held through the cutover and released to the new shard.
// Every transaction pgbench counted committed its pgbench_history row,
// which is on the new shard after.
func TestMoveUnderPgbench(t *testing.T) {
	t.Parallel()
	bin := pgbenchPath(t)
	b := setup(t, options{moves: true})
	id, token := b.tenant(t, "bench", "s1")
	dsn := b.dsn(id, token, id)

	init := pgbench(b.ctx, bin, dsn, 2*time.Minute, "-i", "-s", "1", "-q")
	require.NoError(t, init.err, "pgbench -i:\n%s", init.out)

	moved := make(chan struct{})
	var tpcb, sel []benchRun
	var wg sync.WaitGroup
	wg.Go(func() {
		tpcb = benchChain(b.ctx, bin, dsn, moved, "-c", "8", "-j", "8", "-M", "prepared", "-n")
	})
	wg.Go(func() { sel = benchChain(b.ctx, bin, dsn, moved, "-c", "8", "-j", "8", "-S", "-n") })
	time.Sleep(2 * time.Second) // the load is on

	start := time.Now()
	res, err := b.reb.Move(b.ctx, rebalancer.MoveRequest{ID: id, Shard: "s2"}, 2*time.Minute)
	close(moved)
	took := time.Since(start)
	wg.Wait()
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, res.Operation.State, "%+v", res.Operation)
	require.Equal(t, "s2", res.Tenant.Shard)

	var transactions int64
	for name, runs := range map[string][]benchRun{"TPC-B -M prepared": tpcb, "-S": sel} {
		var n int64
		for i, r := range runs {
			require.NoError(t, r.err, "pgbench %s run %d exits 0:\n%s", name, i, r.out)
			require.False(t, r.aborted, "pgbench %s run %d: no client aborted:\n%s", name, i, r.out)
			require.Zero(t, r.failed, "pgbench %s run %d: no failed transaction:\n%s", name, i, r.out)
			require.Positive(t, r.processed, "pgbench %s run %d:\n%s", name, i, r.out)
			n += r.processed
		}
		t.Logf("pgbench %s: %d runs, %d transactions, none failed", name, len(runs), n)
		if name != "-S" {
			transactions = n
		}
	}
	t.Logf("move took %s", took.Round(time.Millisecond))

	// Through the endpoint (the new shard now), and on the new shard as
	// its admin: one history row per TPC-B transaction.
	conn, err := pgx.Connect(b.ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	var history int64
	require.NoError(t, conn.QueryRow(b.ctx, "SELECT count(*) FROM pgbench_history").Scan(&history))
	require.Equal(t, transactions, history, "pgbench_history rows through the endpoint")
	tn, err := b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	require.Equal(t, "s2", tn.Shard)
	admin, err := pgx.Connect(b.ctx, b.fleet.Shards[1].DSN(tn.Database))
	require.NoError(t, err)
	defer admin.Close(b.ctx)
	var onTarget int64
	require.NoError(t, admin.QueryRow(b.ctx, "SELECT count(*) FROM pgbench_history").Scan(&onTarget))
	require.Equal(t, transactions, onTarget, "pgbench_history rows on shard s2")
}

// TestMoveUnderPgx moves a tenant live while 16 pgx clients, each with
// its own connection through the endpoint, insert rows one at a time:
// no insert fails, and every acknowledged row is there after, on the new
// shard.
func TestMoveUnderPgx(t *testing.T) {
	t.Parallel()
	b := setup(t, options{moves: true})
	id, token := b.tenant(t, "writer", "s1")
	dsn := b.dsn(id, token, id)
	setupConn, err := pgx.Connect(b.ctx, dsn)
	require.NoError(t, err)
	_, err = setupConn.Exec(b.ctx, "CREATE TABLE acked (client int, seq int, PRIMARY KEY (client, seq))")
	require.NoError(t, err)
	setupConn.Close(b.ctx)

	const clients = 16
	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		acked    [clients]int // the last acknowledged seq of each client; all before it too
		errs     [clients][]error
		inserted atomic.Int64
		slowest  atomic.Int64 // the longest insert, in ns: one held through the cutover
	)
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		conns[i], err = pgx.Connect(b.ctx, dsn)
		require.NoError(t, err)
		defer conns[i].Close(context.Background())
	}
	for i := range clients {
		wg.Go(func() {
			conn := conns[i]
			for seq := 1; !stop.Load(); seq++ {
				ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
				start := time.Now()
				_, err := conn.Exec(ctx, "INSERT INTO acked VALUES ($1, $2)", i, seq)
				cancel()
				if d := time.Since(start).Nanoseconds(); d > slowest.Load() {
					slowest.Store(d) // racy max, good enough for a log line
				}
				if err != nil {
					errs[i] = append(errs[i], fmt.Errorf("insert (%d, %d): %w", i, seq, err))
					if conn.IsClosed() || len(errs[i]) > 20 {
						return
					}
					seq-- // the same row again
					time.Sleep(50 * time.Millisecond)
					continue
				}
				acked[i] = seq
				inserted.Add(1)
			}
		})
	}
	time.Sleep(time.Second)
	res, err := b.reb.Move(b.ctx, rebalancer.MoveRequest{ID: id, Shard: "s2"}, 2*time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, res.Operation.State, "%+v", res.Operation)
	time.Sleep(time.Second) // writes on the new shard too
	stop.Store(true)
	wg.Wait()
	t.Logf("%d rows acknowledged; the slowest insert took %s", inserted.Load(), time.Duration(slowest.Load()).Round(time.Millisecond))
	for i := range clients {
		require.Empty(t, errs[i], "client %d saw no error", i)
	}

	conn, err := pgx.Connect(b.ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	for i := range clients {
		var n, top int
		require.NoError(t, conn.QueryRow(b.ctx, "SELECT count(*), coalesce(max(seq), 0) FROM acked WHERE client = $1", i).Scan(&n, &top))
		require.Equal(t, acked[i], top, "client %d's last acknowledged row", i)
		require.Equal(t, acked[i], n, "client %d's rows 1..%d, each once", i, acked[i])
	}
	var total int64
	require.NoError(t, conn.QueryRow(b.ctx, "SELECT count(*) FROM acked").Scan(&total))
	require.Equal(t, inserted.Load(), total)
	require.Greater(t, total, int64(clients), "the clients wrote during the move")
	tn, err := b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	require.Equal(t, "s2", tn.Shard)
}
