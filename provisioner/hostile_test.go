package provisioner

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/internal/hostile"
	"github.com/silo-db/silo/pgcluster"
)

// asTenant connects to a tenant's database as its own role.
func (b *bundle) asTenant(t *testing.T, p *Provisioner, tn *silo.Tenant) *pgx.Conn {
	t.Helper()
	conn, err := p.asTenant(b.ctx, tn, "")
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// requireNotSuper checks on every shard that role is no superuser.
func (b *bundle) requireNotSuper(t *testing.T, p *Provisioner, role string, shards ...string) {
	t.Helper()
	for _, shard := range shards {
		conn, err := p.adminDB(b.ctx, shard, "")
		require.NoError(t, err)
		// A moved tenant's old role is renamed (retired): look for both.
		var super bool
		err = conn.QueryRow(b.ctx, `SELECT coalesce(bool_or(rolsuper), false) FROM pg_roles
			WHERE rolname = $1 OR (rolname LIKE 'silo\_moved\_%' AND rolname LIKE '%\_' || $1)`, role).Scan(&super)
		conn.Close(b.ctx)
		require.NoError(t, err)
		require.False(t, super, "the tenant's role became a superuser on shard %s", shard)
	}
}

// A migration that reaches a tenant's database from the provisioner (a
// resumed tenant brought to the fleet's target) runs as the tenant: its
// trigger on the version table runs in the tenant's session and gains
// nothing.
func TestHostileResumeMigrates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, err := os.ReadFile("../migrations/tenant/00001_notes.sql")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "00001_notes.sql"), first, 0o644))
	p, b := setup(t, Config{TenantMigrations: os.DirFS(dir)})
	b.ownShard(t, "h", nil) // its template takes this test's migrations
	for _, shared := range []string{"a", "b"} {
		// Upkeep would bring the shared shards' templates to this test's target.
		_, err := b.store.SetShardState(b.ctx, shared, silo.ShardDisabled)
		require.NoError(t, err)
	}
	res, err := p.Create(b.ctx, CreateRequest{ID: newID("hostile-resume"), Shard: "h"}, 30*time.Second)
	require.NoError(t, err)
	tn := res.Tenant
	conn := b.asTenant(t, p, tn)
	require.NoError(t, hostile.Install(b.ctx, conn, tn.Database))
	_, err = conn.Exec(b.ctx, `CREATE TRIGGER hostile AFTER INSERT ON silo_schema_migrations
		FOR EACH ROW EXECUTE FUNCTION public.hostile_trigger()`)
	require.NoError(t, err)
	_, err = p.Suspend(b.ctx, tn.ID, 30*time.Second)
	require.NoError(t, err)
	// A run moved the target on while the tenant was suspended.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "00002_tags.sql"),
		[]byte("-- +goose Up\nCREATE TABLE tags (id int);\n-- +goose Down\nDROP TABLE tags;\n"), 0o644))
	_, err = b.pool.Exec(b.ctx, `UPDATE tenant_schema_target SET version = 2`)
	require.NoError(t, err)

	res, err = p.Resume(b.ctx, tn.ID, 30*time.Second)
	require.NoError(t, err)
	require.Equal(t, silo.TenantActive, res.Tenant.State)
	require.EqualValues(t, 2, res.Tenant.SchemaVersion)
	b.requireNotSuper(t, p, tn.Database, "h")
	log, err := hostile.Log(b.ctx, b.asTenant(t, p, res.Tenant))
	require.NoError(t, err)
	require.Equal(t, []hostile.Entry{{RanAs: tn.Database, SessionAs: tn.Database}}, log, "in the tenant's own session")
}

// An export runs pg_dump as the tenant's own role: what the tenant shut
// even itself out of is not read with more rights (the dump fails), and a
// suspended tenant is exported within a login window that leaves its role
// unable to log in.
func TestHostileExport(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{PgDump: requirePgDump(t)})
	res, err := p.Create(b.ctx, CreateRequest{ID: newID("hostile-export"), Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	tn := res.Tenant
	conn := b.asTenant(t, p, tn)
	_, err = conn.Exec(b.ctx, `CREATE TABLE sealed (secret text); INSERT INTO sealed VALUES ('x');
		REVOKE ALL ON sealed FROM CURRENT_USER`)
	require.NoError(t, err)
	err = p.Export(b.ctx, tn.ID, io.Discard)
	require.Error(t, err)
	require.Contains(t, silo.ErrorMessage(err), "permission denied", "pg_dump ran with the tenant's rights")

	_, err = conn.Exec(b.ctx, `DROP TABLE sealed`)
	require.NoError(t, err)
	_, err = p.Suspend(b.ctx, tn.ID, 30*time.Second)
	require.NoError(t, err)
	var out strings.Builder
	require.NoError(t, p.Export(b.ctx, tn.ID, &out))
	require.True(t, strings.HasPrefix(out.String(), "PGDMP"))
	admin, err := p.adminDB(b.ctx, "a", "")
	require.NoError(t, err)
	defer admin.Close(b.ctx)
	var canLogin bool
	require.NoError(t, admin.QueryRow(b.ctx, `SELECT rolcanlogin FROM pg_roles WHERE rolname = $1`, tn.Database).Scan(&canLogin))
	require.False(t, canLogin, "the suspended tenant still cannot log in")
}

// Every tenant can list its shard's databases, roles and sessions: none of
// those names tells it who its neighbours are.
func TestHostileNamesSayNothing(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	spy, err := p.Create(b.ctx, CreateRequest{ID: newID("spy"), Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	neighbour := newID("globex-secret-customer")
	_, err = p.Create(b.ctx, CreateRequest{ID: neighbour, Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	var names string
	require.NoError(t, b.asTenant(t, p, spy.Tenant).QueryRow(b.ctx, `
		SELECT string_agg(n, ' ') FROM (
			SELECT datname::text FROM pg_database UNION ALL SELECT rolname::text FROM pg_roles
			UNION ALL SELECT coalesce(usename::text, '') || ' ' || coalesce(datname::text, '') FROM pg_stat_activity) s(n)`).Scan(&names))
	require.NotContains(t, names, "globex")
	require.NotContains(t, names, strings.ReplaceAll(neighbour, "-", "_"))
	require.Contains(t, names, spy.Tenant.Database, "the listing was not empty")
}

// A tenant's limits hold on the shard, for every Silo server at once, and
// the tenant cannot lift them from its own session.
func TestHostileLimits(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	res, err := p.Create(b.ctx, CreateRequest{ID: newID("bounded"), Shard: "a", Limits: &silo.TenantLimits{Connections: 2, TempFileMB: 1}}, 30*time.Second)
	require.NoError(t, err)
	tn := res.Tenant
	require.Equal(t, silo.TenantLimits{Connections: 2, TempFileMB: 1}, tn.Limits)
	c1, c2 := b.asTenant(t, p, tn), b.asTenant(t, p, tn)
	_, err = p.asTenant(b.ctx, tn, "")
	require.Error(t, err, "a third session is over the connection limit")
	require.Contains(t, err.Error(), "too many connections")

	_, err = c1.Exec(b.ctx, `SET temp_file_limit = -1`)
	require.Error(t, err)
	_, err = c1.Exec(b.ctx, `ALTER ROLE CURRENT_USER CONNECTION LIMIT -1`)
	require.Error(t, err)
	_, err = c2.Exec(b.ctx, `SET work_mem = '64kB'; SELECT count(*) FROM (SELECT g FROM generate_series(1, 300000) g ORDER BY g DESC) s`)
	require.Error(t, err)
	require.Contains(t, err.Error(), "temp_file_limit")

	// Changed, audited; bad values change nothing.
	for _, bad := range []silo.TenantLimits{{Connections: 0, TempFileMB: 1}, {Connections: 2, TempFileMB: -7}} {
		_, err := p.SetLimits(b.ctx, tn.ID, bad)
		requireCode(t, err, silo.EINVALID)
	}
	_, err = p.SetLimits(b.ctx, "nobody-here", silo.TenantLimits{Connections: 3, TempFileMB: 10})
	requireCode(t, err, silo.ENOTFOUND)
	after, err := p.SetLimits(b.ctx, tn.ID, silo.TenantLimits{Connections: 3, TempFileMB: -1})
	require.NoError(t, err)
	require.Equal(t, silo.TenantLimits{Connections: 3, TempFileMB: -1}, after.Limits)
	c3 := b.asTenant(t, p, tn)
	var setting string
	require.NoError(t, c3.QueryRow(b.ctx, `SELECT current_setting('temp_file_limit')`).Scan(&setting))
	require.Equal(t, "-1", setting)
}

// requirePgDump returns the pg_dump beside the PostgreSQL server binaries,
// or skips the test: the PostgreSQL 16+ packages of the npm registry ship
// none, and Debian's pg_dump 15 refuses a newer server.
func requirePgDump(t *testing.T) string {
	t.Helper()
	binDir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	path := filepath.Join(binDir, "pg_dump")
	if _, err := os.Stat(path); err != nil {
		t.Skipf("no pg_dump beside the PostgreSQL server binaries in %s (the 16+ packages of the npm registry ship none)", binDir)
	}
	return path
}

// ownShard starts a cluster of the test's own (which it may stop) and
// registers it as shard name in region eu; it returns the cluster and its
// config, to start it again.
func (b *bundle) ownShard(t *testing.T, name string, settings map[string]string) (*pgcluster.Cluster, pgcluster.Config) {
	t.Helper()
	dir, err := os.MkdirTemp("", "shard-"+name+"-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg := pgcluster.Config{Dir: filepath.Join(dir, name), Fast: true, Settings: settings}
	c, err := pgcluster.Start(b.ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: name, DSN: c.DSN("postgres"), Region: "eu"})
	require.NoError(t, err)
	return c, cfg
}
