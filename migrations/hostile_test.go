package migrations_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/internal/hostile"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/pgcluster"
)

// ownShard starts a cluster of the test's own and adds it as shard name:
// its template takes the test's migrations without touching the shared
// shards' templates.
func (b *runnerBundle) ownShard(t *testing.T, name string) *pgcluster.Cluster {
	t.Helper()
	dir, err := os.MkdirTemp("", "hostile-"+name+"-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	c, err := pgcluster.Start(b.ctx, pgcluster.Config{Dir: filepath.Join(dir, name), Fast: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: name, DSN: c.DSN("postgres")})
	require.NoError(t, err)
	b.dsns[name] = c.DSN
	return c
}

// A tenant's trigger on its own version table, and a view it puts in that
// table's place, run in the sessions of `silo migrate up` and `silo migrate
// drift`. They try to make the tenant a superuser; they run as the
// tenant's own login role, so they cannot, and the log shows whose session
// they ran in. The control at the end runs the same function the old way,
// the admin with SET ROLE, and it succeeds: the defence is what stops it.
func TestHostileMigrateAndDrift(t *testing.T) {
	t.Parallel()
	s, b := setupRunner(t)
	h := b.ownShard(t, "h")
	for _, shared := range []string{"a", "b"} {
		_, err := b.store.SetShardState(b.ctx, shared, silo.ShardDisabled)
		require.NoError(t, err)
	}
	tn := b.create(t, s, "evil", "h")
	role := tn.Database
	dialer := newDialer(t, b.store)
	asTenant := func() *pgx.Conn {
		conn, err := dialer.ConnectTenant(b.ctx, tn, "")
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	admin, err := pgx.Connect(b.ctx, h.DSN(role))
	require.NoError(t, err)
	defer admin.Close(b.ctx)
	notSuper := func() {
		t.Helper()
		super, err := hostile.Superuser(b.ctx, admin, role)
		require.NoError(t, err)
		require.False(t, super, "the tenant's role became a superuser")
	}
	tc := asTenant()
	require.NoError(t, hostile.Install(b.ctx, tc, role))
	_, err = tc.Exec(b.ctx, `CREATE TRIGGER hostile AFTER INSERT ON silo_schema_migrations
		FOR EACH ROW EXECUTE FUNCTION public.hostile_trigger()`)
	require.NoError(t, err)

	// migrate up: goose inserts the new version, and the trigger fires.
	writeMigration(t, b.dir, "00002_widgets.sql",
		"-- +goose Up\nCREATE TABLE widgets (id bigint PRIMARY KEY);\n-- +goose Down\nDROP TABLE widgets;\n")
	run, err := s.runner.StartRun(b.ctx, migrations.RunOptions{})
	require.NoError(t, err)
	run = waitRun(t, b.ctx, s.runner, run.ID)
	require.Equal(t, silo.RunSucceeded, run.State, "%+v", run)
	notSuper()
	log, err := hostile.Log(b.ctx, tc)
	require.NoError(t, err)
	require.Len(t, log, 1, "the trigger ran once, for version 2")
	require.Equal(t, hostile.Entry{RanAs: role, SessionAs: role}, log[0], "in the tenant's own session")

	// drift: the version table is now a view over a function.
	_, err = tc.Exec(b.ctx, `
		ALTER TABLE silo_schema_migrations RENAME TO real_versions;
		CREATE FUNCTION public.hostile_versions() RETURNS SETOF real_versions LANGUAGE plpgsql AS $f$
		BEGIN PERFORM public.hostile_escalate(); RETURN QUERY SELECT * FROM real_versions; END $f$;
		CREATE VIEW silo_schema_migrations AS SELECT * FROM public.hostile_versions()`)
	require.NoError(t, err)
	report, err := s.runner.Drift(b.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, report.Checked)
	notSuper()
	log, err = hostile.Log(b.ctx, tc)
	require.NoError(t, err)
	require.Len(t, log, 2, "the view's function ran in drift's session")
	require.Equal(t, hostile.Entry{RanAs: role, SessionAs: role}, log[1])

	// The control: the admin's session with SET ROLE, as migrations ran
	// before, is escalated by the same function.
	_, err = admin.Exec(b.ctx, "SET ROLE "+pgx.Identifier{role}.Sanitize()+"; SELECT public.hostile_escalate(); RESET ROLE")
	require.NoError(t, err)
	super, err := hostile.Superuser(b.ctx, admin, role)
	require.NoError(t, err)
	require.True(t, super, "the attack works against SET ROLE")
	_, err = admin.Exec(b.ctx, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" NOSUPERUSER")
	require.NoError(t, err)
}
