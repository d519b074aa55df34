package proxy_test

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/router"
)

// sessionBundle is an endpoint whose tenants have one server connection
// each, so that every client of a tenant takes the same one: what one
// leaves on it, the next finds.
func sessionBundle(t *testing.T) (*bundle, string, string) {
	t.Helper()
	b := setup(t, options{router: router.Config{TenantMaxConns: 1}})
	id, token := b.tenant(t, "shared", "")
	b.sentinel(t, id, token)
	return b, id, token
}

// client connects a pgx client; notified counts the notifications it
// gets.
func (b *bundle) client(t *testing.T, id, token string, notified *atomic.Int64) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(b.dsn(id, token, id))
	require.NoError(t, err)
	cfg.OnNotification = func(*pgconn.PgConn, *pgconn.Notification) {
		if notified != nil {
			notified.Add(1)
		}
	}
	conn, err := pgx.ConnectConfig(b.ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(b.ctx) })
	return conn
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	_, err := conn.Exec(t.Context(), sql, args...)
	require.NoError(t, err, sql)
}

func text(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var s *string
	require.NoError(t, conn.QueryRow(t.Context(), sql, args...).Scan(&s), sql)
	if s == nil {
		return "<null>"
	}
	return *s
}

// Clients of one tenant share server connections; what one sets on its
// session, with SQL, set_config or a prepared statement, follows it and
// reaches no other client, whatever the value holds. Each step is checked
// alone: the other client first, on the server connection the setter
// left, then the setter, on whichever it gets next.
func TestHostileSharedSessionSettings(t *testing.T) {
	t.Parallel()
	b, id, token := sessionBundle(t)
	a := b.client(t, id, token, nil)
	v := b.client(t, id, token, nil)
	const state = `SELECT concat_ws('|', coalesce(current_setting('app.user_id', true), ''),
		coalesce(current_setting('app.note', true), ''), current_setting('search_path'),
		current_setting('standard_conforming_strings'))`
	clean := text(t, v, state)
	require.Equal(t, `||"$user", public|on`, clean)
	for _, tt := range []struct {
		name string
		set  func()
		want string // the setter's state
	}{
		// A custom parameter, as an application's row-level security reads
		// it: SET app.user_id, then current_setting('app.user_id').
		{"a custom parameter", func() { mustExec(t, a, "SET app.user_id = 'alice'") },
			`alice||"$user", public|on`},
		// Set by a statement of pgx's cache, run twice: each run is a
		// Bind of a statement parsed before.
		{"set_config in a prepared statement", func() {
			for _, schema := range []string{"first", "second"} {
				mustExec(t, a, "SELECT pg_catalog.set_config('search_path', $1, false)", schema)
			}
		}, `alice||second|on`},
		// Quotes, backslashes and an escape, with
		// standard_conforming_strings off.
		{"quotes and backslashes", func() {
			mustExec(t, a, "SET standard_conforming_strings = off")
			mustExec(t, a, `SELECT set_config('app.note', E'it''s \\ "q" \\'' ; RESET ALL; --', false)`)
		}, `alice|it's \ "q" \' ; RESET ALL; --|second|off`},
		{"RESET ALL", func() { mustExec(t, a, "RESET ALL") }, `||"$user", public|on`},
	} {
		tt.set()
		for range 2 {
			require.Equal(t, clean, text(t, v, state), "%s: another client's session", tt.name)
			require.Equal(t, tt.want, text(t, a, state), "%s: the setter's session", tt.name)
		}
	}
	b.sentinelOK(t, id, token)
}

// A tenant's schema early on its search_path, with objects named as
// pg_catalog's (set_config, current_setting, unnest, string_to_array, the
// = of text), does not take the place of the endpoint's own: the
// statements with which it syncs and reads back session parameters run
// none of them, and read what they mean to. Before the fix, the tenant's =
// chose the parameters read back: none, and another client took the
// server connection with search_path = evil, where 'a' = 'a' was false.
func TestHostileSharedSessionSearchPath(t *testing.T) {
	t.Parallel()
	b, id, token := sessionBundle(t)
	a := b.client(t, id, token, nil)
	v := b.client(t, id, token, nil)
	mustExec(t, a, `CREATE SCHEMA evil;
		CREATE TABLE evil.log (call text, query text);
		CREATE FUNCTION evil.set_config(text, text, boolean) RETURNS text LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO evil.log VALUES ('set_config', current_query()); RETURN 'hijacked'; END $$;
		CREATE FUNCTION evil.current_setting(text) RETURNS text LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO evil.log VALUES ('current_setting', current_query()); RETURN 'hijacked'; END $$;
		CREATE FUNCTION evil.current_setting(text, boolean) RETURNS text LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO evil.log VALUES ('current_setting', current_query()); RETURN 'hijacked'; END $$;
		CREATE FUNCTION evil.string_to_array(text, text) RETURNS text[] LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO evil.log VALUES ('string_to_array', current_query()); RETURN '{}'; END $$;
		CREATE FUNCTION evil.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO evil.log VALUES ('unnest', current_query()); END $$;
		CREATE FUNCTION evil.eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO evil.log VALUES ('=', current_query()); RETURN false; END $$;
		CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.eq);
		CREATE VIEW evil.pg_settings AS SELECT 'search_path'::text AS name, 'session'::text AS source`)
	mustExec(t, a, "SET search_path = evil, pg_catalog, public")
	mustExec(t, a, "SET app.user_id = 'alice'")
	for range 3 {
		// The other client gets a clean session.
		require.Equal(t, `"$user", public|true|`, text(t, v,
			`SELECT concat_ws('|', pg_catalog.current_setting('search_path'), ('a' = 'a')::text, pg_catalog.current_setting('app.user_id', true))`))
		// The client that set it keeps it.
		require.Equal(t, "evil, pg_catalog, public|alice", text(t, a,
			`SELECT pg_catalog.concat_ws('|', pg_catalog.current_setting('search_path'), pg_catalog.current_setting('app.user_id'))`))
		mustExec(t, a, "SET application_name = 'evil'") // and the endpoint reads back again
	}
	require.Equal(t, "<null>", text(t, v, "SELECT string_agg(call || ': ' || query, E'\n') FROM evil.log"),
		"the endpoint ran the tenant's functions")
	b.sentinelOK(t, id, token)
}

// One client's statements that drop or take prepared statements (SQL,
// protocol, from a driver's cache or from a function) do not break the
// statements the endpoint prepared for another client of its tenant on
// the server connection they share.
func TestHostileSharedSessionStatements(t *testing.T) {
	t.Parallel()
	b, id, token := sessionBundle(t)
	a := b.client(t, id, token, nil)
	v := b.client(t, id, token, nil)
	// v's statement, in pgx's cache: parsed once, then bound.
	victim := func() error {
		var n int
		err := v.QueryRow(b.ctx, "SELECT $1::int + 1", 41).Scan(&n)
		if err == nil && n != 42 {
			err = fmt.Errorf("got %d", n)
		}
		return err
	}
	require.NoError(t, victim())
	mustExec(t, a, `CREATE FUNCTION drop_statements() RETURNS void LANGUAGE plpgsql AS $$
		BEGIN EXECUTE 'DEALLOCATE ALL'; END $$`)
	for _, tt := range []struct {
		name   string
		attack func()
		// errors the victim may see once, before the endpoint notices:
		// what a function does is not in the SQL it sees.
		once bool
	}{
		{"DISCARD ALL", func() { mustExec(t, a, "DISCARD ALL") }, false},
		{"DEALLOCATE ALL", func() { mustExec(t, a, "DEALLOCATE ALL") }, false},
		{"DEALLOCATE ALL from a cached statement", func() {
			_, err := a.PgConn().Prepare(b.ctx, "d", "DEALLOCATE ALL", nil)
			require.NoError(t, err)
			for range 2 {
				require.NoError(t, a.PgConn().ExecPrepared(b.ctx, "d", nil, nil, nil).Read().Err)
			}
		}, false},
		{"DISCARD ALL from a cached statement", func() {
			_, err := a.PgConn().Prepare(b.ctx, "dd", "DISCARD ALL", nil)
			require.NoError(t, err)
			require.NoError(t, a.PgConn().ExecPrepared(b.ctx, "dd", nil, nil, nil).Read().Err)
		}, false},
		{"a protocol Close of the endpoint's statements", func() {
			rows, err := a.Query(b.ctx, "SELECT name FROM pg_prepared_statements")
			require.NoError(t, err)
			names, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			require.NotEmpty(t, names)
			for _, name := range names {
				require.NoError(t, a.PgConn().Deallocate(b.ctx, name))
			}
		}, false},
		{"DEALLOCATE ALL in a function", func() { mustExec(t, a, "SELECT drop_statements()") }, true},
	} {
		tt.attack()
		failed := 0
		for range 3 {
			if err := victim(); err != nil {
				require.True(t, tt.once && failed == 0, "%s: %v", tt.name, err)
				require.Equal(t, "26000", pgCode(err), "%s: %v", tt.name, err)
				failed++
			}
		}
		require.NoError(t, victim(), tt.name)
	}

	// The same statement name, two texts, two clients: each runs its own.
	for i, c := range []*pgx.Conn{a, v} {
		_, err := c.PgConn().Prepare(b.ctx, "same_name", fmt.Sprintf("SELECT %d", i), nil)
		require.NoError(t, err)
	}
	for range 2 {
		for i, c := range []*pgx.Conn{a, v} {
			res := c.PgConn().ExecPrepared(b.ctx, "same_name", nil, nil, nil).Read()
			require.NoError(t, res.Err)
			require.Equal(t, fmt.Sprint(i), string(res.Rows[0][0]))
		}
	}

	// SQL PREPARE: the name is the client's, on a session it does not keep.
	mustExec(t, a, "PREPARE mine AS SELECT 1")
	res, err := v.PgConn().Exec(b.ctx, "PREPARE mine AS SELECT 2; EXECUTE mine").ReadAll()
	require.NoError(t, err)
	require.Equal(t, "2", string(res[1].Rows[0][0]))
	b.sentinelOK(t, id, token)
}

// What one client sets to hobble its own session (statement_timeout = 1,
// default_transaction_read_only, client_encoding = SQL_ASCII, a 1 ms
// idle_session_timeout that ends the server session it leaves behind)
// stays its own: the other clients of its tenant are served as usual,
// with no error. Before the fix, each of them got FATAL 57P05 from the
// server session the setter had left in the pool, and was disconnected.
func TestHostileSharedSessionHobbled(t *testing.T) {
	t.Parallel()
	b, id, token := sessionBundle(t)
	a := b.wire(t)
	a.login(id, token)
	v := b.client(t, id, token, nil)
	mustExec(t, v, "CREATE TABLE hobbled (body text)")
	for _, set := range []string{
		"SET default_transaction_read_only = on",
		"SET client_encoding = 'SQL_ASCII'",
		"SET idle_session_timeout = 1",
		"SET statement_timeout = 1",
	} {
		require.Equal(t, "", a.query(set), set)
		// The setter keeps what it set (but after statement_timeout = 1,
		// its statements time out at random).
		if set != "SET statement_timeout = 1" {
			require.Equal(t, "25006", a.query("INSERT INTO hobbled VALUES ('x')"))
		}
		if set == "SET client_encoding = 'SQL_ASCII'" {
			require.Equal(t, "SQL_ASCII", a.value("SELECT current_setting('client_encoding')"))
		}
		for range 3 {
			time.Sleep(5 * time.Millisecond) // past the 1 ms idle_session_timeout
			var got, enc string
			require.NoError(t, v.QueryRow(b.ctx, "INSERT INTO hobbled VALUES ('café') RETURNING body || pg_sleep(0.01)::text, current_setting('client_encoding')").Scan(&got, &enc),
				"after %s", set)
			require.Equal(t, "café", got)
			require.Equal(t, "UTF8", enc)
		}
	}
	b.sentinelOK(t, id, token)
}

// A function called by the protocol's FunctionCall (libpq's PQfn, the
// large-object calls) has no SQL for the endpoint to read: whatever it
// set (set_config by its oid, a custom parameter) stays on that session,
// which is closed rather than given to another client.
func TestHostileSharedSessionFunctionCall(t *testing.T) {
	t.Parallel()
	b, id, token := sessionBundle(t)
	a := b.wire(t)
	a.login(id, token)
	v := b.client(t, id, token, nil)
	oid := text(t, v, "SELECT 'pg_catalog.set_config(text, text, boolean)'::regprocedure::oid::text")
	fn, err := strconv.ParseUint(oid, 10, 32)
	require.NoError(t, err)
	for _, kv := range [][2]string{{"app.user_id", "alice"}, {"search_path", "pg_catalog"}} {
		a.send(&pgproto3.FunctionCall{Function: uint32(fn), ArgFormatCodes: []uint16{0},
			Arguments: [][]byte{[]byte(kv[0]), []byte(kv[1]), []byte("false")}})
		for {
			msg := a.receive()
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				t.Fatalf("%s: %s", e.Code, e.Message)
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		require.Equal(t, `|"$user", public`, text(t, v,
			"SELECT coalesce(current_setting('app.user_id', true), '') || '|' || current_setting('search_path')"), "after %s", kv[0])
	}
	b.sentinelOK(t, id, token)
}
