package proxy_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// A prepared statement does what its text says each time it runs, not
// only the first (pgx prepares a statement once and then only binds it):
// a set_config run again follows the client to its next server
// connection, and a session advisory lock taken again does not outlive
// the transaction on a pooled connection.
func TestPreparedStatementEffectsEachRun(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	id, token := b.tenant(t, "prepfx", "s1")
	ctx := b.ctx
	one, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer one.Close(ctx)
	two, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer two.Close(ctx)

	for _, v := range []string{"first, public", "second, public"} {
		_, err = one.Exec(ctx, "SELECT set_config('search_path', $1, false)", v)
		require.NoError(t, err)
	}
	// two holds one's last server connection, so one's next statement
	// goes to another, where its settings are set from what it is known
	// to have.
	tx, err := two.Begin(ctx)
	require.NoError(t, err)
	var sp string
	require.NoError(t, one.QueryRow(ctx, "SELECT current_setting('search_path')").Scan(&sp))
	require.Equal(t, "second, public", sp)
	require.NoError(t, tx.Rollback(ctx))

	admin := b.admin(t, 0, id)
	for range 2 {
		_, err = one.Exec(ctx, "SELECT pg_advisory_lock($1)", 42)
		require.NoError(t, err)
		// The connection is closed once the client has its answer.
		require.Eventually(t, func() bool {
			var held int
			return admin.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").Scan(&held) == nil && held == 0
		}, 5*time.Second, 10*time.Millisecond, "the lock went with the transaction's server connection")
	}
}
