package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/proxy"
	"github.com/silo-db/silo/router"
)

// sessionDSN is a libpq URL for the tenant through the endpoint in session
// mode.
func (b *bundle) sessionDSN(id, token string) string {
	return b.dsn(id, token, id, "options", "-c "+proxy.PoolModeParam+"=session")
}

// backendAlive reports whether the shard (test shard i) has a session with
// process id pid.
func backendAlive(t *testing.T, ctx context.Context, admin *pgx.Conn, pid uint32) bool {
	t.Helper()
	var n int
	require.NoError(t, admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n))
	return n > 0
}

// In session mode a client keeps one server session for its life, so what
// transaction pooling cannot carry works: LISTEN (a notification reaches
// the idle client), a session advisory lock across transactions, a WITH
// HOLD cursor, SQL-level PREPARE and EXECUTE. Its server session is closed
// once it leaves, not pooled.
func TestSessionMode(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	id, token := b.tenant(t, "session", "s1")
	ctx := b.ctx
	// As pgx's RuntimeParams, and in the URL's options.
	cfg, err := pgx.ParseConfig(b.dsn(id, token, id))
	require.NoError(t, err)
	cfg.RuntimeParams[proxy.PoolModeParam] = "session"
	listener, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	defer listener.Close(context.Background())
	sess, err := pgx.Connect(ctx, b.sessionDSN(id, token))
	require.NoError(t, err)
	defer sess.Close(context.Background())
	pooled, err := pgx.Connect(ctx, b.dsn(id, token, id)) // transaction pooling
	require.NoError(t, err)
	defer pooled.Close(ctx)

	// LISTEN/NOTIFY: the notification reaches the client while it waits,
	// idle, with no statement of its own.
	_, err = listener.Exec(ctx, "LISTEN news")
	require.NoError(t, err)
	got := make(chan string, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		n, err := listener.WaitForNotification(wctx)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- n.Channel + ":" + n.Payload
	}()
	time.Sleep(100 * time.Millisecond) // the listener is waiting
	_, err = pooled.Exec(ctx, "SELECT pg_notify('news', 'hello')")
	require.NoError(t, err)
	select {
	case s := <-got:
		require.Equal(t, "news:hello", s)
	case <-time.After(15 * time.Second):
		t.Fatal("no notification")
	}

	// A session advisory lock, held across transactions: another client
	// cannot take it until it is let go.
	_, err = sess.Exec(ctx, "SELECT pg_advisory_lock(7)")
	require.NoError(t, err)
	for range 3 {
		tx, err := sess.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, "SELECT 1")
		require.NoError(t, err)
		require.NoError(t, tx.Commit(ctx))
	}
	var ok bool
	require.NoError(t, pooled.QueryRow(ctx, "SELECT pg_try_advisory_lock(7)").Scan(&ok))
	require.False(t, ok, "held by the session client")
	require.NoError(t, sess.QueryRow(ctx, "SELECT pg_advisory_unlock(7)").Scan(&ok))
	require.True(t, ok, "the session client still holds it")
	require.NoError(t, pooled.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock(7)").Scan(&ok))
	require.True(t, ok, "free once let go")

	// A WITH HOLD cursor outlives its transaction.
	tx, err := sess.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "DECLARE c CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 10) g")
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	for _, want := range []int{3, 6, 9} {
		var last int
		rows, err := sess.Query(ctx, "FETCH 3 FROM c")
		require.NoError(t, err)
		for rows.Next() {
			require.NoError(t, rows.Scan(&last))
		}
		require.NoError(t, rows.Err())
		require.Equal(t, want, last)
	}
	_, err = sess.Exec(ctx, "CLOSE c")
	require.NoError(t, err)

	// SQL-level PREPARE, executed in later transactions.
	_, err = sess.Exec(ctx, "PREPARE twice(int) AS SELECT $1 * 2")
	require.NoError(t, err)
	for i := range 3 {
		var n int
		require.NoError(t, sess.QueryRow(ctx, "EXECUTE twice("+string(rune('1'+i))+")").Scan(&n))
		require.Equal(t, 2*(i+1), n)
	}

	// Its server session ends when it leaves.
	var pid uint32
	require.NoError(t, sess.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid))
	admin := b.admin(t, 0, id)
	require.True(t, backendAlive(t, ctx, admin, pid))
	var again uint32
	require.NoError(t, sess.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&again))
	require.Equal(t, pid, again, "one server session for the client's life")
	require.NoError(t, sess.Close(ctx))
	require.Eventually(t, func() bool { return !backendAlive(t, ctx, admin, pid) }, 5*time.Second, 10*time.Millisecond,
		"the server session is closed once the client leaves")
	var roleSessions int
	tn, err := b.store.GetTenant(ctx, id)
	require.NoError(t, err)
	require.NoError(t, admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND pid = $2", tn.Database, pid).Scan(&roleSessions))
	require.Zero(t, roleSessions)
}

// Session clients count in the shard's budget and the tenant's cap: with
// both at 2, a third session client of the tenant waits for a connection,
// and gets 57P03 when none comes free in time, or connects when one
// leaves.
func TestSessionModeBudget(t *testing.T) {
	t.Parallel()
	const authTimeout = 3 * time.Second
	b := setup(t, options{
		router: router.Config{ShardBudget: 2, TenantMaxConns: 2},
		proxy:  proxy.Config{AuthTimeout: authTimeout},
	})
	id, token := b.tenant(t, "budget", "s1")
	ctx := b.ctx
	var held []*pgx.Conn
	for range 2 {
		c, err := pgx.Connect(ctx, b.sessionDSN(id, token))
		require.NoError(t, err)
		defer c.Close(context.Background())
		held = append(held, c)
	}

	start := time.Now()
	_, err := pgx.Connect(ctx, b.sessionDSN(id, token))
	took := time.Since(start)
	require.Equal(t, "57P03", pgCode(err), "the third session client: %v", err)
	require.Contains(t, err.Error(), "FATAL")
	require.GreaterOrEqual(t, took, authTimeout/2, "it waited for a connection")
	require.Less(t, took, authTimeout+2*time.Second)
	t.Logf("the third session client waited %v: %v", took.Round(time.Millisecond), err)

	// One leaves while a third waits: the third gets its connection.
	done := make(chan error, 1)
	go func() {
		c, err := pgx.Connect(ctx, b.sessionDSN(id, token))
		if err == nil {
			_, err = c.Exec(ctx, "SELECT 1")
			c.Close(context.Background())
		}
		done <- err
	}()
	time.Sleep(authTimeout / 3)
	require.NoError(t, held[0].Close(ctx))
	select {
	case err := <-done:
		require.NoError(t, err, "the waiting client connects once a session client leaves")
	case <-time.After(2 * authTimeout):
		t.Fatal("the waiting client still waits")
	}
	// The remaining session client is still served.
	_, err = held[1].Exec(ctx, "SELECT 1")
	require.NoError(t, err)
}
