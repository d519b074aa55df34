package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/pgcluster"
)

// An export restores with a plain pg_restore (no flags but -d) into an
// empty database on a server that has never heard of the tenant's role:
// no error, no warning, the same rows, and the objects owned by whoever
// restored them.
func TestDevExportRestoresPlain(t *testing.T) {
	t.Parallel()
	binDir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	if _, err := os.Stat(filepath.Join(binDir, "pg_restore")); err != nil {
		t.Skipf("no pg_restore beside the server binaries in %s", binDir)
	}
	dir, stop, silo := startDevCLI(t)
	ctx := context.Background()
	query := func(id, sql string) string { t.Helper(); return silosQuery(t, silo, id, sql) }

	_, _, err = silo("tenant", "create", "acme", "--shard", "shard-1")
	require.NoError(t, err)
	// Grants, a view, a function and an index: each an owner or an ACL in
	// the archive if the export kept them.
	query("acme", "INSERT INTO notes (title) VALUES ('first'), ('second'), ('third')")
	query("acme", "CREATE VIEW titles AS SELECT upper(title) AS title FROM notes")
	query("acme", "CREATE FUNCTION shout(s text) RETURNS text LANGUAGE sql AS $$ SELECT upper(s) || '!' $$")
	query("acme", "CREATE INDEX notes_title ON notes (title)")
	query("acme", "GRANT SELECT ON notes, titles TO PUBLIC")
	want := query("acme", "SELECT title FROM notes ORDER BY id")
	require.Equal(t, "title\nfirst\nsecond\nthird\n", want)
	file := filepath.Join(t.TempDir(), "acme.dump")
	_, stderr, err := silo("tenant", "export", "acme", "-f", file)
	require.NoError(t, err, stderr)

	// An empty database on the other shard, which has no role of acme's.
	password, err := os.ReadFile(filepath.Join(dir, "clusters", "shard-2", "password"))
	require.NoError(t, err)
	port, err := os.ReadFile(filepath.Join(dir, "clusters", "shard-2", "port"))
	require.NoError(t, err)
	adminDSN := func(db string) string {
		return "postgres://silo:" + strings.TrimSpace(string(password)) + "@127.0.0.1:" + strings.TrimSpace(string(port)) + "/" + db
	}
	admin, err := pgx.Connect(ctx, adminDSN("postgres"))
	require.NoError(t, err)
	defer admin.Close(ctx)
	var roles int
	require.NoError(t, admin.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 't\\_%'").Scan(&roles))
	require.Zero(t, roles, "shard-2 has no tenant roles")
	_, err = admin.Exec(ctx, "CREATE DATABASE restored")
	require.NoError(t, err)

	restore := exec.CommandContext(ctx, filepath.Join(binDir, "pg_restore"), "-d", adminDSN("restored"), file)
	output, err := restore.CombinedOutput()
	require.NoError(t, err, "%s", output)
	require.NotContains(t, strings.ToLower(string(output)), "error")
	require.Empty(t, string(output))

	conn, err := pgx.Connect(ctx, adminDSN("restored"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var titles string
	require.NoError(t, conn.QueryRow(ctx, "SELECT string_agg(title, E'\\n' ORDER BY id) FROM notes").Scan(&titles))
	require.Equal(t, want, "title\n"+titles+"\n", "the same rows")
	var view, shouted string
	var index bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT (SELECT string_agg(title, ',' ORDER BY title) FROM titles), shout('hi'),
		EXISTS (SELECT FROM pg_indexes WHERE indexname = 'notes_title')`).Scan(&view, &shouted, &index))
	require.Equal(t, "FIRST,SECOND,THIRD", view)
	require.Equal(t, "HI!", shouted)
	require.True(t, index)
	var owners []string
	rows, err := conn.Query(ctx, `SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class
		WHERE relnamespace = 'public'::regnamespace ORDER BY 1`)
	require.NoError(t, err)
	for rows.Next() {
		var o string
		require.NoError(t, rows.Scan(&o))
		owners = append(owners, o)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"silo"}, owners, "owned by whoever restored the archive")
	require.NoError(t, stop())
}
