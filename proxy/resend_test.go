package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// admin connects to a tenant's database on test shard i as the shard's
// superuser.
func (b *bundle) admin(t *testing.T, i int, tenantID string) *pgx.Conn {
	t.Helper()
	tn, err := b.store.GetTenant(b.ctx, tenantID)
	require.NoError(t, err)
	conn, err := pgx.Connect(b.ctx, b.fleet.Shards[i].DSN(tn.Database))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// waitingPID waits until a session of the tenant's database other than
// the admin's waits on ev (a wait event or its type: Lock, PgSleep), and not one of skip,
// and returns its pid.
func waitingPID(t *testing.T, ctx context.Context, admin *pgx.Conn, ev string, skip ...uint32) uint32 {
	t.Helper()
	var pid uint32
	require.Eventually(t, func() bool {
		rows, err := admin.Query(ctx, `SELECT pid FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND $1 IN (wait_event_type, wait_event)`, ev)
		if err != nil {
			return false
		}
		pids, err := pgx.CollectRows(rows, pgx.RowTo[uint32])
		if err != nil {
			return false
		}
		for _, p := range pids {
			if !containsPID(skip, p) {
				pid = p
				return true
			}
		}
		return false
	}, 20*time.Second, 10*time.Millisecond, "a session waiting on %s", ev)
	return pid
}

func containsPID(pids []uint32, p uint32) bool {
	for _, q := range pids {
		if p == q {
			return true
		}
	}
	return false
}

// A statement whose session the server ends before it answered anything
// (an admin, or a move's cutover past its drain, terminates it while it
// waits on a lock) is sent again on another server connection: nothing of
// it ran (the server's FATAL came first, so the transaction it was in is
// rolled back), and the client sees it succeed, once. A DO block, which
// may commit on its own before it ends, is not sent again: its client gets
// the server's FATAL, and what it committed is there once.
func TestResendWhenSessionEndsFirst(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	id, token := b.tenant(t, "resend", "s1")
	ctx := b.ctx
	conn, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE TABLE t (n int)")
	require.NoError(t, err)
	admin := b.admin(t, 0, id)

	// The admin holds the table; the client's insert waits for it. (In a
	// session of its own: pg_stat_activity stands still in a transaction.)
	locker, err := b.admin(t, 0, id).Begin(ctx)
	require.NoError(t, err)
	_, err = locker.Exec(ctx, "LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		// The simple protocol: the server answers nothing before the end.
		_, err := conn.PgConn().Exec(ctx, "INSERT INTO t VALUES (1)").ReadAll()
		done <- err
	}()
	first := waitingPID(t, ctx, admin, "Lock")
	var ok bool
	require.NoError(t, admin.QueryRow(ctx, "SELECT pg_terminate_backend($1)", first).Scan(&ok))
	require.True(t, ok)
	waitingPID(t, ctx, admin, "Lock", first) // sent again, on another session
	require.NoError(t, locker.Commit(ctx))
	select {
	case err := <-done:
		require.NoError(t, err, "the client saw its insert succeed")
	case <-time.After(20 * time.Second):
		t.Fatal("the insert did not end")
	}
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM t WHERE n = 1").Scan(&n))
	require.Equal(t, 1, n, "inserted once")
	require.Equal(t, 1.0, metricValue(t, b.reg, "silo_proxy_resends_total"))

	// A DO block that commits, then is ended while it sleeps.
	go func() {
		_, err := conn.PgConn().Exec(ctx, "DO $$ BEGIN INSERT INTO t VALUES (2); COMMIT; PERFORM pg_sleep(60); END $$").ReadAll()
		done <- err
	}()
	sleeper := waitingPID(t, ctx, admin, "PgSleep")
	require.NoError(t, admin.QueryRow(ctx, "SELECT pg_terminate_backend($1)", sleeper).Scan(&ok))
	select {
	case err := <-done:
		require.Equal(t, "57P01", pgCode(err), "the server's FATAL reaches the client: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the DO block was sent again")
	}
	require.NoError(t, admin.QueryRow(ctx, "SELECT count(*) FROM t WHERE n = 2").Scan(&n))
	require.Equal(t, 1, n, "what the DO block committed is there once")
	require.Equal(t, 1.0, metricValue(t, b.reg, "silo_proxy_resends_total"), "the DO block was not sent again")
}
