package proxy_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// A tenant that ends its own server sessions (pg_terminate_backend of its
// own backend, which any role may do, or a timeout of its own setting) is
// not a shard that fails: the shard's other tenants are served throughout.
// The shard's breaker opens after two failures in a row, so before the fix
// two clients that did it one after the other shut every tenant of the
// shard out for the breaker's cooldown (57P03).
func TestHostileSelfTerminationSparesTheShard(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	a, keyA := b.tenant(t, "killer", "s1")
	v, keyV := b.tenant(t, "bystander", "s1")
	bystander, err := pgx.Connect(b.ctx, b.dsn(v, keyV, v))
	require.NoError(t, err)
	defer bystander.Close(b.ctx)
	admin, err := pgx.Connect(b.ctx, b.fleet.Shards[0].DSN("postgres"))
	require.NoError(t, err)
	defer admin.Close(b.ctx)
	var db string
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT database_name FROM tenants WHERE id = $1", a).Scan(&db))
	for _, tt := range []struct{ before, kill, code string }{
		{"BEGIN", "SELECT pg_terminate_backend(pg_backend_pid())", "57P01"},
		{"SET idle_in_transaction_session_timeout = 1; BEGIN", "SELECT pg_sleep(0.2)", "25P03"},
	} {
		// Two clients, each in a transaction: two server connections.
		var killers []*pgx.Conn
		for range 2 {
			k, err := pgx.Connect(b.ctx, b.dsn(a, keyA, a))
			require.NoError(t, err)
			defer k.Close(b.ctx)
			_, err = k.Exec(b.ctx, tt.before)
			require.NoError(t, err)
			killers = append(killers, k)
		}
		// Until the server has ended what it ends by itself.
		require.Eventually(t, func() bool {
			var n int
			err := admin.QueryRow(b.ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = $1 AND state = 'idle in transaction'`, db).Scan(&n)
			return err == nil && (n == 0 || tt.code != "25P03")
		}, 10*time.Second, 10*time.Millisecond)
		for _, k := range killers {
			_, err := k.Exec(b.ctx, tt.kill)
			require.Equal(t, tt.code, pgCode(err), "%v", err)
		}
		var n int
		require.NoError(t, bystander.QueryRow(b.ctx, "SELECT 1").Scan(&n), "after %s", tt.kill)
	}
}
