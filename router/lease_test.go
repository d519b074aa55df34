package router_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/router"
)

func pgCode(err error) string {
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
		return pe.Code
	}
	return ""
}

// terminate ends every session of a tenant's role on test shard i, as a
// move's cutover does, and waits until they are gone.
func (b *bundle) terminate(t *testing.T, i int, tn *silo.Tenant) {
	t.Helper()
	admin, err := pgx.Connect(b.ctx, b.fleet.Shards[i].DSN("postgres"))
	require.NoError(t, err)
	defer admin.Close(b.ctx)
	_, err = admin.Exec(b.ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", tn.Database)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var n int
		return admin.QueryRow(b.ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", tn.Database).Scan(&n) == nil && n == 0
	}, 10*time.Second, 10*time.Millisecond)
}

// A connection whose backend was ended while it sat idle in the pool is
// not lent: the next request gets a live one, and runs.
func TestIdleConnectionEndedByServer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("ended"), Shard: "s1"}, time.Minute)
	require.NoError(t, err)
	tn := res.Tenant
	r := b.router(t, router.Config{})
	pids := map[uint32]bool{}
	query := func() error {
		return r.WithTenant(b.ctx, tn.ID, func(conn *pgx.Conn) error {
			pids[conn.PgConn().PID()] = true
			_, err := conn.Exec(b.ctx, "INSERT INTO notes (title) VALUES ('x')")
			return err
		})
	}
	require.NoError(t, query())
	b.terminate(t, 0, tn)
	for range 3 {
		require.NoError(t, query(), "the pooled connection's end is seen before a statement goes to it")
	}
	require.Len(t, pids, 2, "one connection before, one after")
}

// The sessions of one tenant ended under their borrowers (a move's
// cutover does it) fail those borrowers' statements, with the server's
// 57P01, but do not open the shard's breaker: the shard answered, and its
// other tenants are served at once.
func TestEndedSessionsKeepShardOpen(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var ended, other *silo.Tenant
	for _, p := range []struct {
		prefix string
		dst    **silo.Tenant
	}{{"cut", &ended}, {"bystander", &other}} {
		res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID(p.prefix), Shard: "s1"}, time.Minute)
		require.NoError(t, err)
		*p.dst = res.Tenant
	}
	// A long cooldown: a breaker opened by mistake would still be open
	// when the bystander asks.
	r := b.router(t, router.Config{BreakerCooldown: time.Minute})
	var leases []*router.Lease
	for range 3 {
		l, err := r.Acquire(b.ctx, ended.ID)
		require.NoError(t, err)
		leases = append(leases, l)
	}
	b.terminate(t, 0, ended)
	for _, l := range leases {
		_, err := l.Conn().Exec(b.ctx, "SELECT 1")
		require.Error(t, err)
		require.Equal(t, "57P01", pgCode(err), "%v", err)
		require.Error(t, l.Release(err))
	}
	require.NoError(t, r.WithTenant(b.ctx, other.ID, func(conn *pgx.Conn) error {
		_, err := conn.Exec(b.ctx, "SELECT 1")
		return err
	}), "the shard's breaker is closed")
	require.NoError(t, r.WithTenant(b.ctx, ended.ID, func(conn *pgx.Conn) error {
		_, err := conn.Exec(b.ctx, "SELECT 1")
		return err
	}), "and the tenant whose sessions ended is served again")
}

// A caller whose context has no deadline (the wire-protocol endpoint's)
// and whose wait ends at the router's AcquireTimeout is told the tenant's
// connections are busy (EUNAVAILABLE), not "context canceled".
func TestAcquireTimeoutIsUnavailable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.router(t, router.Config{TenantMaxConns: 1, AcquireTimeout: 300 * time.Millisecond})
	tn := b.create(t, newID("acquire-timeout"))
	held, err := r.Acquire(context.Background(), tn.ID)
	require.NoError(t, err)
	defer held.Release(nil)

	start := time.Now()
	_, err = r.Acquire(context.Background(), tn.ID)
	requireCode(t, err, silo.EUNAVAILABLE)
	require.Contains(t, err.Error(), "came free in time")
	require.Less(t, time.Since(start), 5*time.Second)
}
