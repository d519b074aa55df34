package proxy_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

func pgCode(err error) string {
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
		return pe.Code
	}
	return ""
}

func TestPgxThroughEndpoint(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	id, token := b.tenant(t, "pgx", "")
	ctx := b.ctx
	conn, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer conn.Close(ctx)

	var db, user string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_database(), current_user").Scan(&db, &user))
	require.NotEmpty(t, db)

	_, err = conn.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY, name text)")
	require.NoError(t, err)
	// Parameterized (prepared by pgx's statement cache) many times, so the
	// statement is re-prepared on whichever server connection serves it.
	for i := range 50 {
		_, err = conn.Exec(ctx, "INSERT INTO items VALUES ($1, $2)", i, "n"+string(rune('a'+i%26)))
		require.NoError(t, err)
	}
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM items WHERE id >= $1", 10).Scan(&n))
	require.Equal(t, 40, n)

	// A transaction holds its server connection across statements.
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "INSERT INTO items VALUES (100, 'tx')")
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM items WHERE id = 100").Scan(&n))
	require.Equal(t, 0, n)

	// COPY both ways (pgx uses the simple protocol for them).
	rows := [][]any{{200, "c1"}, {201, "c2"}}
	copied, err := conn.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"id", "name"}, pgx.CopyFromRows(rows))
	require.NoError(t, err)
	require.EqualValues(t, 2, copied)
	var out strings.Builder
	_, err = conn.PgConn().CopyTo(ctx, &out, "COPY (SELECT id FROM items WHERE id >= 200 ORDER BY id) TO STDOUT")
	require.NoError(t, err)
	require.Equal(t, "200\n201\n", out.String())

	// Errors pass through with their SQLSTATE, and the session goes on.
	_, err = conn.Exec(ctx, "INSERT INTO items VALUES (1, 'dup')")
	require.Equal(t, "23505", pgCode(err))
	require.NoError(t, conn.QueryRow(ctx, "SELECT 1").Scan(&n))

	// Session parameters follow the client across server connections.
	_, err = conn.Exec(ctx, "SET TimeZone = 'Asia/Tokyo'")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "SET search_path = pg_catalog, public")
	require.NoError(t, err)
	for range 5 {
		var tz, sp string
		require.NoError(t, conn.QueryRow(ctx, "SELECT current_setting('TimeZone'), current_setting('search_path')").Scan(&tz, &sp))
		require.Equal(t, "Asia/Tokyo", tz)
		require.Equal(t, "pg_catalog, public", sp)
	}
	require.Equal(t, "Asia/Tokyo", conn.PgConn().ParameterStatus("TimeZone"))
}

func TestLoginRefusals(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	a, keyA := b.tenant(t, "alpha", "")
	other, _ := b.tenant(t, "beta", "")
	ctx := b.ctx
	for name, dsn := range map[string]string{
		"wrong key":      b.dsn(a, flip(keyA), a),
		"unknown tenant": b.dsn("nobody-here", keyA, "nobody-here"),
		"other's db":     b.dsn(a, keyA, other),
		"other's user":   b.dsn(other, keyA, other),
		"not a key":      b.dsn(a, "hunter2", a),
	} {
		_, err := pgx.Connect(ctx, dsn)
		require.Error(t, err, name)
		require.Equal(t, "28P01", pgCode(err), "%s: %v", name, err)
	}
	_, err := b.prov.Suspend(ctx, a, time.Minute)
	require.NoError(t, err)
	_, err = pgx.Connect(ctx, b.dsn(a, keyA, a))
	require.Equal(t, "55000", pgCode(err), "%v", err)
}

// flip changes one character in the middle of a key's secret.
func flip(token string) string {
	i := len(token) - 10
	c := byte('a')
	if token[i] == 'a' {
		c = 'b'
	}
	return token[:i] + string(c) + token[i+1:]
}

func TestCancel(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	id, token := b.tenant(t, "cancel", "")
	ctx := b.ctx
	conn, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer conn.Close(ctx)
	start := time.Now()
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = conn.PgConn().CancelRequest(context.Background())
	}()
	_, err = conn.Exec(ctx, "SELECT pg_sleep(20)")
	require.Equal(t, "57014", pgCode(err), "%v", err)
	require.Less(t, time.Since(start), 5*time.Second)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT 1").Scan(&n))
}
