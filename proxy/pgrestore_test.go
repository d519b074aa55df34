package proxy_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/router"
)

// pgTool returns a PostgreSQL client program that works with the fleet's
// servers: the one beside the server binaries, else the one on PATH; of
// the fleet's major or newer (pg_dump refuses a newer server).
func pgTool(t *testing.T, b *bundle, name string) string {
	t.Helper()
	path := ""
	if dir, err := pgcluster.FindBinDir(); err == nil {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			path = filepath.Join(dir, name)
		}
	}
	if path == "" {
		path = clientPath(t, name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	require.NoError(t, err)
	m := regexp.MustCompile(`\(PostgreSQL\) (\d+)`).FindSubmatch(out)
	require.NotNil(t, m, "%s --version: %s", path, out)
	if major, _ := strconv.Atoi(string(m[1])); major < b.fleet.Major {
		missingClient(t, "%s is PostgreSQL %d's, older than the servers (%d)", path, major, b.fleet.Major)
	}
	return path
}

// A tenant's archive, made by the provisioner's export and by pg_dump
// through the endpoint, restored through the endpoint into new tenants by
// pg_restore -j 3: four clients whose SET and set_config (search_path ”,
// check_function_bodies off, ...) must follow each one from server
// connection to server connection, and COPY FROM STDIN.
func TestPgRestore(t *testing.T) {
	t.Parallel()
	// One server connection for the tenant: pg_restore's four clients and
	// churn's take turns on it, and each turn may find it RESET.
	b := setup(t, options{router: router.Config{TenantMaxConns: 1}})
	pgDump, pgRestore := pgTool(t, b, "pg_dump"), pgTool(t, b, "pg_restore")
	src, srcKey := b.tenant(t, "dumpsrc", "")
	ctx := b.ctx
	srcConn, err := pgx.Connect(ctx, b.dsn(src, srcKey, src))
	require.NoError(t, err)
	defer srcConn.Close(ctx)
	schema, err := os.ReadFile(testdata(t, "restore_schema.sql"))
	require.NoError(t, err)
	_, err = srcConn.Exec(ctx, string(schema))
	require.NoError(t, err)
	want := tenantContents(t, srcConn)
	require.Equal(t, "2000", want["function"])

	dir := t.TempDir()
	exported := filepath.Join(dir, "export.dump")
	f, err := os.Create(exported)
	require.NoError(t, err)
	require.NoError(t, b.prov.Export(ctx, src, f))
	require.NoError(t, f.Close())
	dumped := filepath.Join(dir, "endpoint.dump")
	_, stderr, err := runClient(t, "", time.Minute, "", pgDump, "--format=custom", "--file", dumped, "--dbname", b.dsn(src, srcKey, src))
	require.NoError(t, err, stderr)

	for name, archive := range map[string]string{"export": exported, "pg_dump through the endpoint": dumped} {
		dst, dstKey := b.tenant(t, "restored", "")
		stopChurn := churn(t, b.dsn(dst, dstKey, dst, "options", "-c statement_timeout=60s"))
		restoreStart := time.Now()
		// --clean --if-exists: a new tenant already has the template's
		// tables, which the archive holds too.
		_, stderr, err := runClient(t, "", 2*time.Minute, "", pgRestore, "--no-owner", "--no-privileges",
			"--clean", "--if-exists", "--exit-on-error", "--jobs", "3", "--dbname", b.dsn(dst, dstKey, dst), archive)
		t.Logf("%s: restored in %v", name, time.Since(restoreStart))
		churned := stopChurn()
		require.NoError(t, err, "%s: %s", name, stderr)
		require.Positive(t, churned, name)

		conn, err := pgx.Connect(ctx, b.dsn(dst, dstKey, dst))
		require.NoError(t, err)
		require.Equal(t, want, tenantContents(t, conn), name)
		// The sequences go on from where they were, and the trigger fires.
		var id int
		var touched bool
		require.NoError(t, conn.QueryRow(ctx, "INSERT INTO items (name) VALUES ('new') RETURNING id, updated_at IS NOT NULL").Scan(&id, &touched))
		require.Equal(t, 2001, id, name)
		require.True(t, touched, name)
		require.NoError(t, conn.QueryRow(ctx, "INSERT INTO tags (label) VALUES ('new') RETURNING id").Scan(&id))
		require.Equal(t, 21, id, name)
		require.NoError(t, conn.Close(ctx))
	}
}

// tenantContents describes a tenant's database: its objects, its rows and
// its sequences' states.
func tenantContents(t *testing.T, conn *pgx.Conn) map[string]string {
	t.Helper()
	queries := map[string]string{
		"objects": `SELECT string_agg(o, E'\n' ORDER BY o) FROM (
			SELECT c.relkind::text || ' ' || c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
			UNION ALL SELECT 'function ' || p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
			UNION ALL SELECT 'trigger ' || tg.tgname FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
				WHERE c.relnamespace = 'public'::regnamespace AND NOT tg.tgisinternal
			UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
				WHERE connamespace = 'public'::regnamespace
			UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
			UNION ALL SELECT 'view ' || viewname || ' ' || definition FROM pg_views WHERE schemaname = 'public'
		) x(o)`,
		"items":     `SELECT count(*) || ' ' || md5(string_agg(i::text, ',' ORDER BY i.id)) FROM items i`,
		"tags":      `SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY t.id)) FROM tags t`,
		"item_tags": `SELECT count(*) || ' ' || md5(string_agg(it::text, ',' ORDER BY it.item_id, it.tag_id)) FROM item_tags it`,
		"sequences": `SELECT (SELECT last_value || ' ' || is_called FROM items_id_seq) || ', ' ||
			(SELECT last_value || ' ' || is_called FROM tags_id_seq)`,
		"view":     `SELECT count(*)::text FROM long_items`,
		"function": `SELECT item_count()::text`,
	}
	out := map[string]string{}
	for name, q := range queries {
		var v string
		require.NoError(t, conn.QueryRow(context.Background(), q).Scan(&v), name)
		out[name] = v
	}
	return out
}

// churn runs short transactions as another client of the tenant until the
// returned function is called, which returns how many ran. Its sessions
// have a parameter pg_restore's lack (statement_timeout): a server
// connection it used is RESET for pg_restore's next statement there, so
// whatever pg_restore SET must be known to follow it, or is lost.
func churn(t *testing.T, dsn string) (stop func() int) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	require.NoError(t, err)
	done := make(chan struct{})
	result := make(chan error, 1)
	var n int
	go func() {
		for {
			select {
			case <-done:
				result <- nil
				return
			default:
			}
			if _, err := conn.Exec(context.Background(), "SELECT 1"); err != nil {
				result <- err
				return
			}
			n++
		}
	}()
	return func() int {
		t.Helper()
		close(done)
		require.NoError(t, <-result)
		require.NoError(t, conn.Close(context.Background()))
		return n
	}
}
