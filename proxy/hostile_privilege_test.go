package proxy_test

import (
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/internal/hostile"
)

// Least privilege holds through the endpoint: a client has its tenant's
// role and no more, in either pool mode, whatever it sets at startup or
// after, and the next client of its tenant has it too.
func TestHostileEndpointPrivilege(t *testing.T) {
	t.Parallel()
	b, id, token := sessionBundle(t)
	a := b.client(t, id, token, nil)
	role := text(t, a, "SELECT current_user::text")
	require.NoError(t, hostile.Install(b.ctx, a, role))

	for _, sql := range []string{
		"SET ROLE silo", "SET ROLE silo_owner", "SET ROLE pg_read_server_files", "SET ROLE pg_execute_server_program",
		"SET SESSION AUTHORIZATION silo", "SELECT set_config('role', 'silo', false)",
		"SELECT set_config('session_authorization', 'silo', false)",
		"COPY (SELECT 1) TO PROGRAM 'id'", "COPY sentinel FROM '/etc/passwd'", "COPY sentinel TO '/tmp/silo-owned'",
		"SELECT pg_read_file('/etc/passwd')", "SELECT pg_ls_dir('.')", "SELECT lo_import('/etc/passwd')",
		"ALTER SYSTEM SET work_mem = '1GB'", "SELECT pg_reload_conf()", "ALTER ROLE CURRENT_USER SUPERUSER",
		"CREATE ROLE other LOGIN", "LOAD 'passwordcheck'",
	} {
		_, err := a.Exec(b.ctx, sql)
		require.Contains(t, []string{"42501", "58P01"}, pgCode(err), "%s: %v", sql, err)
	}
	// Startup parameters are set as the tenant's role too: refused.
	for _, opt := range []string{"-crole=silo", "-csession_authorization=silo", "--is-superuser=on"} {
		_, err := pgx.Connect(b.ctx, b.dsn(id, token, id, "options", opt))
		require.Contains(t, []string{"42501", "55P02"}, pgCode(err), "%s: %v", opt, err)
	}
	// In session mode, where messages pass through as they are.
	sess, err := pgx.Connect(b.ctx, b.dsn(id, token, id, "options", "-csilo.pool_mode=session"))
	require.NoError(t, err)
	for _, sql := range []string{"SET ROLE silo", "COPY (SELECT 1) TO PROGRAM 'id'", "SELECT pg_read_file('/etc/passwd')"} {
		_, err := sess.Exec(b.ctx, sql)
		require.Equal(t, "42501", pgCode(err), "%s: %v", sql, err)
	}
	require.NoError(t, sess.Close(b.ctx)) // it held the tenant's one connection
	// The tenant's own escalation attempt, through the endpoint, gains
	// nothing.
	mustExec(t, a, "SELECT public.hostile_escalate()")
	entries, err := hostile.Log(b.ctx, a)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, hostile.Entry{RanAs: role, SessionAs: role}, entries[0])
	for _, c := range []*pgx.Conn{a, b.client(t, id, token, nil)} {
		require.Equal(t, role+"|"+role+"|off", text(t, c,
			"SELECT concat_ws('|', current_user, session_user, current_setting('is_superuser'))"))
	}
	b.sentinelOK(t, id, token)
}

// Under transaction pooling, LISTEN reaches nobody: a notification never
// goes to a client that did not LISTEN on its own session, even when the
// LISTEN hid in a function and its server connection went back to the
// pool listening.
func TestHostileSharedSessionNotifications(t *testing.T) {
	t.Parallel()
	b, id, token := sessionBundle(t)
	var heardA, heardV atomic.Int64
	a := b.client(t, id, token, &heardA)
	v := b.client(t, id, token, &heardV)
	mustExec(t, a, `CREATE FUNCTION listen_quietly() RETURNS void LANGUAGE plpgsql AS $$ BEGIN LISTEN secrets; END $$`)
	for _, listen := range []string{"LISTEN secrets", "SELECT listen_quietly()"} {
		mustExec(t, a, listen)
		mustExec(t, v, "NOTIFY secrets, 'for nobody'")
		mustExec(t, v, "SELECT pg_notify('secrets', 'for nobody either')")
		for range 2 {
			mustExec(t, a, "SELECT 1")
			mustExec(t, v, "SELECT 1")
		}
		require.Zero(t, heardA.Load()+heardV.Load(), "after %s", listen)
	}
	b.sentinelOK(t, id, token)
}
