package proxy_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/proxy"
	"github.com/silo-db/silo/router"
)

// A client that finds the tenant's connections all in use past the
// endpoint's ServerWaitTimeout is told 57P03, and stays connected: the
// statement failed, not the session. (Every failed acquire was once a bare
// context.Canceled, told as XX000 "internal error".)
func TestBusyTenantIs57P03(t *testing.T) {
	t.Parallel()
	b := setup(t, options{router: router.Config{TenantMaxConns: 1}, proxy: proxy.Config{ServerWaitTimeout: 300 * time.Millisecond}})
	id, token := b.tenant(t, "busy", "")
	ctx := b.ctx
	holder, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer holder.Close(ctx)
	waiter, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer waiter.Close(ctx)

	tx, err := holder.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "SELECT 1")
	require.NoError(t, err)
	start := time.Now()
	_, err = waiter.Exec(ctx, "SELECT 1")
	require.Equal(t, "57P03", pgCode(err), "%v", err)
	require.Contains(t, err.Error(), "came free in time")
	require.Less(t, time.Since(start), 3*time.Second)

	require.NoError(t, tx.Commit(ctx))
	var n int
	require.NoError(t, waiter.QueryRow(ctx, "SELECT 2").Scan(&n))
	require.Equal(t, 2, n)
}

// A client waits for a server connection as long as the endpoint's
// ServerWaitTimeout says, not the router's AcquireTimeout (5 s by default,
// meant for a library call): a queue of clients behind a busy budget is
// served in its turn, as PgBouncer's query_wait_timeout lets it be.
func TestClientWaitsPastTheRoutersAcquireTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t, options{router: router.Config{TenantMaxConns: 1, AcquireTimeout: 200 * time.Millisecond},
		proxy: proxy.Config{ServerWaitTimeout: 30 * time.Second}})
	id, token := b.tenant(t, "patient", "")
	ctx := b.ctx
	holder, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer holder.Close(ctx)
	waiter, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer waiter.Close(ctx)

	tx, err := holder.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "SELECT 1")
	require.NoError(t, err)
	const held = time.Second // five times the router's AcquireTimeout
	committed := make(chan error, 1)
	time.AfterFunc(held, func() { committed <- tx.Commit(ctx) })
	start := time.Now()
	var n int
	require.NoError(t, waiter.QueryRow(ctx, "SELECT 2").Scan(&n))
	require.Equal(t, 2, n)
	require.GreaterOrEqual(t, time.Since(start), held-50*time.Millisecond, "served only once the holder committed")
	require.NoError(t, <-committed) // and the holder's connection is the test's again
	require.LessOrEqual(t, metricValue(t, b.reg, "silo_pool_connections_in_use")+metricValue(t, b.reg, "silo_pool_connections_idle"),
		1.0, "one server connection at most, the tenant's cap")
}

// A shard that refuses Silo's own login for the tenant (its role barred
// behind the catalog's back, or a suspension the router has not heard of
// yet) fails the statement with 57P03, and the client stays connected. It
// was once told the shard's FATAL 28000 about a role it never named, and
// lost its session.
func TestShardRefusesTheTenantsRole(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	id, token := b.tenant(t, "barred", "s1")
	ctx := b.ctx
	conn, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var role string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_user").Scan(&role))

	admin, err := pgx.Connect(ctx, b.fleet.Shards[0].DSN("postgres"))
	require.NoError(t, err)
	defer admin.Close(ctx)
	ident := pgx.Identifier{role}.Sanitize()
	_, err = admin.Exec(ctx, "ALTER ROLE "+ident+" NOLOGIN")
	require.NoError(t, err)
	_, err = admin.Exec(ctx, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1", role)
	require.NoError(t, err)

	_, err = conn.Exec(ctx, "SELECT 1")
	require.Equal(t, "57P03", pgCode(err), "%v", err)
	require.NotContains(t, err.Error(), role, "the shard's own refusal is for the logs")
	_, err = admin.Exec(ctx, "ALTER ROLE "+ident+" LOGIN")
	require.NoError(t, err)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT 3").Scan(&n))
	require.Equal(t, 3, n)
}
