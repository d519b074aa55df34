package api_test

import (
	"context"
	"encoding/json"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
)

// The hostile tenant of these tests holds an API key for its own tenant
// and sends its own SQL through the data API, to hurt the server or to
// leave state behind for the next call.

// tenantAuth makes an API key for tenant and returns its Authorization
// header.
func (b *bundle) tenantAuth(t *testing.T, tenant string) string {
	t.Helper()
	return "Bearer " + b.createKey(t, tenant, `{}`).Token
}

// transactionAuth posts statements (SQL strings) with auth.
func (b *bundle) transactionAuth(t *testing.T, auth, tenant string, stmts ...string) response {
	t.Helper()
	list := make([]map[string]any, len(stmts))
	for i, sql := range stmts {
		list[i] = map[string]any{"sql": sql}
	}
	return b.doAuth(t, auth, "POST", "/v1/tenants/"+tenant+"/transaction", jsonBody(t, map[string]any{"statements": list}))
}

// shardAdmin connects to database db of shard cluster 0 as its superuser.
func (b *bundle) shardAdmin(t *testing.T, db string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.fleet.Shards[0].DSN(db))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// database is tenant's database, which is also its role.
func (b *bundle) database(t *testing.T, tenant string) string {
	t.Helper()
	tn, err := b.store.GetTenant(b.ctx, tenant)
	require.NoError(t, err)
	return tn.Database
}

// statusKB reads a field of /proc/self/status, in bytes.
func statusKB(t *testing.T, field string) int64 {
	t.Helper()
	raw, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for line := range strings.SplitSeq(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// resetPeakRSS makes VmHWM, the peak resident set, start again from the
// current one (Linux 4.0 and later).
func resetPeakRSS(t *testing.T) {
	t.Helper()
	require.NoError(t, os.WriteFile("/proc/self/clear_refs", []byte("5"), 0))
}

// A row, an error or a notice from PostgreSQL larger than the router's
// message cap is refused on its header, before it is read: 413 ETOOLARGE,
// and the connection that saw it is closed, never reused. Three such rows
// of 400 MB at once took the server from 154 MB to 5.6 GB before; now they
// cost it next to nothing. Not parallel: it measures this process, which
// parallel tests would share.
func TestHostileDataAPIMemory(t *testing.T) {
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "mem-acme")
	b.createTenant(t, "mem-other")
	auth := b.tenantAuth(t, "mem-acme")
	// huge is the reported attack; over is any row over the cap of 16 MiB,
	// cheaper for the shard to make.
	const huge, over = `SELECT repeat('x', 400000000)`, `SELECT repeat('x', 20000000)`
	pid := func() string {
		t.Helper()
		return rowText(requireResult(t, b.queryAuth(t, auth, "mem-acme", `SELECT pg_backend_pid()`)).Rows[0])[0]
	}
	count := func() string {
		t.Helper()
		return rowText(requireResult(t, b.queryAuth(t, auth, "mem-acme", `SELECT count(*) FROM notes`)).Rows[0])[0]
	}
	requireResult(t, b.queryAuth(t, auth, "mem-acme", `INSERT INTO notes (title) VALUES ('kept')`))

	// One at a time: the connection is gone from the shard, and the next
	// call has another.
	before := pid()
	p := requireProblem(t, b.queryAuth(t, auth, "mem-acme", over), 413, silo.ETOOLARGE)
	require.Contains(t, *p.Detail, "over the data API's limit of 16777216 bytes")
	require.NotEqual(t, before, pid(), "the connection that saw the message is never reused")
	admin := b.shardAdmin(t, "postgres")
	require.Eventually(t, func() bool {
		var n int
		err := admin.QueryRow(b.ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, before).Scan(&n)
		return err == nil && n == 0
	}, 10*time.Second, 20*time.Millisecond, "its backend ends")

	// Three at once, as one tenant can (4 connections each): the server's
	// memory hardly moves. TotalAlloc counts every byte the Go heap handed
	// out meanwhile, the peak RSS what the process held at its highest.
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	resetPeakRSS(t)
	rss0 := statusKB(t, "VmRSS")
	var wg sync.WaitGroup
	rs := make([]response, 3)
	errs := make([]error, 3)
	body := jsonBody(t, map[string]any{"sql": huge})
	for i := range rs {
		wg.Go(func() { rs[i], errs[i] = b.send(auth, "POST", "/v1/tenants/mem-acme/query", body) })
	}
	wg.Wait()
	runtime.ReadMemStats(&m1)
	peak := statusKB(t, "VmHWM") - rss0
	allocated := int64(m1.TotalAlloc - m0.TotalAlloc)
	t.Logf("3 concurrent %s: Go heap allocated %.1f MB, peak RSS +%.1f MB", huge, float64(allocated)/(1<<20), float64(peak)/(1<<20))
	for i, r := range rs {
		require.NoError(t, errs[i])
		b.validate(t, "POST", "/v1/tenants/mem-acme/query", "", r)
		requireProblem(t, r, 413, silo.ETOOLARGE)
	}
	require.Less(t, allocated, int64(100<<20), "the Go heap allocated")
	require.Less(t, peak, int64(100<<20), "the peak resident set grew")

	// In a transaction: the statement is named and nothing is committed.
	p = requireProblem(t, b.transactionAuth(t, auth, "mem-acme", `INSERT INTO notes (title) VALUES ('doomed')`, over), 413, silo.ETOOLARGE)
	require.Equal(t, 1, *p.Statement)
	require.Contains(t, *p.Detail, "the transaction was rolled back")
	require.Equal(t, "1", count())
	p = requireProblem(t, b.transactionAuth(t, auth, "mem-acme",
		`INSERT INTO notes (title) VALUES ('doomed') RETURNING repeat('x', 20000000)`), 413, silo.ETOOLARGE)
	require.Equal(t, 0, *p.Statement)
	require.Equal(t, "1", count())
	// Errors and notices are messages too.
	for _, sql := range []string{
		`DO $$BEGIN RAISE NOTICE '%', repeat('x', 20000000); END$$`,
		`DO $$BEGIN RAISE EXCEPTION '%', repeat('x', 20000000); END$$`,
	} {
		requireProblem(t, b.queryAuth(t, auth, "mem-acme", sql), 413, silo.ETOOLARGE)
	}
	// The shard's other tenants never noticed: closing those connections
	// is no sign of a failing shard, and its breaker stays closed.
	requireResult(t, b.query(t, "mem-other", `SELECT 1`))
	// One under the cap is reported, cut short.
	p = requireProblem(t, b.queryAuth(t, auth, "mem-acme", `DO $$BEGIN RAISE EXCEPTION '%', repeat('x', 1000000); END$$`), 422, silo.EINVALID)
	require.Less(t, len(*p.Detail), 5000)
	require.Contains(t, *p.Detail, "(1000000 bytes)")

	// Notifications: a tenant that listens and notifies itself in one
	// transaction gets them all delivered to its connection, where pgx
	// would keep them until someone waited for them (160 MB here).
	runtime.GC()
	runtime.ReadMemStats(&m0)
	r := b.transactionAuth(t, auth, "mem-acme", `LISTEN flood`,
		`SELECT pg_notify('flood', g || repeat('x', 7990)) FROM generate_series(1, 20000) g`)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	kept := int64(m1.HeapAlloc) - int64(m0.HeapAlloc)
	t.Logf("20,000 notifications of 8 kB: Go heap kept %.1f MB", float64(kept)/(1<<20))
	require.Less(t, kept, int64(20<<20), "the Go heap kept the notifications")

	require.Equal(t, "1", count(), "the tenant's data is as it was")
}

// COPY … FROM STDIN and TO STDOUT are refused at once, whether the SQL
// shows them (first word, behind comments, in any case) or only the
// protocol does (";COPY", which the server reads as one statement): the
// copy-in would wait for data until the query timeout, and the copy-out
// answered "1 row affected" with no rows. Nothing changes, in /query and
// in /transaction, and the tenant's next call works.
func TestHostileDataAPICopy(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "copy-acme")
	auth := b.tenantAuth(t, "copy-acme")
	requireResult(t, b.queryAuth(t, auth, "copy-acme", `INSERT INTO notes (title) VALUES ('kept')`))
	count := func() string {
		t.Helper()
		return rowText(requireResult(t, b.queryAuth(t, auth, "copy-acme", `SELECT count(*) FROM notes`)).Rows[0])[0]
	}
	for _, sql := range []string{
		`COPY notes (title) FROM STDIN`,
		`copy notes TO stdout`,
		"  /* a /* nested */ comment */\n\tCoPy notes (title) FROM STDIN WITH (FORMAT csv)",
		"-- a comment\nCOPY (SELECT * FROM notes) TO STDOUT",
		`;COPY notes (title) FROM STDIN`,
		`; copy notes TO STDOUT`,
	} {
		start := time.Now()
		p := requireProblem(t, b.queryAuth(t, auth, "copy-acme", sql), 422, silo.EINVALID)
		require.Contains(t, *p.Detail, "COPY is not supported through the data API", sql)
		require.Nil(t, p.Sqlstate)
		require.Less(t, time.Since(start), 5*time.Second, "%s: refused at once", sql)

		start = time.Now()
		p = requireProblem(t, b.transactionAuth(t, auth, "copy-acme", `INSERT INTO notes (title) VALUES ('doomed')`, sql), 422, silo.EINVALID)
		require.Contains(t, *p.Detail, "statements[1]: COPY is not supported through the data API", sql)
		require.Equal(t, 1, *p.Statement)
		require.Less(t, time.Since(start), 5*time.Second, "%s: refused at once", sql)
		require.Equal(t, "1", count(), "%s: nothing changed", sql)
	}
}

// sessionState is what a session could carry from one call to the next,
// read in one statement.
const sessionState = `SELECT pg_backend_pid() AS pid,
	current_setting('statement_timeout') AS statement_timeout,
	current_setting('search_path') AS search_path,
	current_setting('work_mem') AS work_mem,
	current_setting('myapp.x', true) AS myapp_x,
	coalesce(current_setting('myapp.y', true), '') AS myapp_y,
	(SELECT count(*) FROM pg_listening_channels()) AS listening,
	(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory_locks,
	(SELECT count(*) FROM pg_prepared_statements WHERE from_sql) AS prepared,
	(SELECT count(*) FROM pg_cursors WHERE is_holdable) AS cursors,
	(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temp_tables,
	to_regclass('pg_temp.scratch') IS NULL AS no_scratch`

// No session state survives from one call to the next on a pooled
// connection, whether the tenant's SQL made it or its functions did (so
// no reading of the SQL could find it): settings (statement_timeout too,
// which set_config slipped past before), LISTEN, session advisory locks,
// temporary tables, its own prepared statements, cursors WITH HOLD and
// currval. The tenant's role may hold one connection, so every call runs
// on the same backend.
func TestHostileDataAPISessionState(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "state-acme")
	auth := b.tenantAuth(t, "state-acme")
	role := pgx.Identifier{b.database(t, "state-acme")}.Sanitize()
	admin := b.shardAdmin(t, "postgres")
	// A setting of the role's own, which its sessions start with.
	_, err := admin.Exec(b.ctx, `ALTER ROLE `+role+` CONNECTION LIMIT 1`)
	require.NoError(t, err)
	_, err = admin.Exec(b.ctx, `ALTER ROLE `+role+` SET myapp.x = 'original'`)
	require.NoError(t, err)

	state := func() []string {
		t.Helper()
		return rowText(requireResult(t, b.queryAuth(t, auth, "state-acme", sessionState)).Rows[0])
	}
	state() // the first call on a connection sets the statement timeout for itself
	original := state()
	require.NotEqual(t, `"0"`, original[1], "the API's statement timeout")
	require.Equal(t, []string{`"\"$user\", public"`, `"4MB"`, `"original"`, `""`, "0", "0", "0", "0", "0", "true"}, original[2:])
	requireResult(t, b.queryAuth(t, auth, "state-acme", `SELECT nextval('notes_id_seq')`))
	requireClean := func(after string) {
		t.Helper()
		require.Equal(t, original, state(), "after %s", after)
		p := requireProblem(t, b.queryAuth(t, auth, "state-acme", `SELECT currval('notes_id_seq')`), 422, silo.EINVALID)
		require.Equal(t, "55000", *p.Sqlstate, "after %s: currval is forgotten", after)
		// Another session may take the lock the tenant's session held.
		tenantDB := b.shardAdmin(t, b.database(t, "state-acme"))
		var got bool
		require.NoError(t, tenantDB.QueryRow(b.ctx, `SELECT pg_try_advisory_lock(42)`).Scan(&got))
		require.True(t, got, "after %s: the advisory lock is free", after)
		// Given back before the session ends: a backend's exit, and so the
		// release of its locks, lags its client's close.
		_, err := tenantDB.Exec(b.ctx, `SELECT pg_advisory_unlock(42)`)
		require.NoError(t, err)
		require.NoError(t, tenantDB.Close(b.ctx))
	}

	// The tenant's own SQL, one call each.
	for _, sql := range []string{
		`SET statement_timeout = 0`,
		`SELECT set_config('statement_timeout', '0', false)`,
		`SET search_path = pg_catalog`,
		`SET work_mem = '1GB'`,
		`SET myapp.x = 'changed'`,
		`SELECT set_config('myapp.y', 'changed', false)`,
		`CREATE TEMP TABLE scratch (a int)`,
		`LISTEN chan`,
		`SELECT pg_advisory_lock(42)`,
		`PREPARE mine AS SELECT 1`,
		`DECLARE cur CURSOR WITH HOLD FOR SELECT 1`,
		`SELECT nextval('notes_id_seq')`,
	} {
		requireResult(t, b.queryAuth(t, auth, "state-acme", sql))
		requireClean(sql)
	}

	// All of it from inside the tenant's function, in one call that
	// succeeds and in one that fails after making it.
	requireResult(t, b.queryAuth(t, auth, "state-acme", `CREATE FUNCTION public.leave_state(fail boolean) RETURNS int LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM set_config('statement_timeout', '0', false);
			PERFORM set_config('search_path', 'pg_catalog', false);
			PERFORM set_config('work_mem', '1GB', false);
			PERFORM set_config('myapp.x', 'changed', false);
			PERFORM set_config('myapp.y', 'changed', false);
			CREATE TEMP TABLE scratch (a int);
			LISTEN chan;
			PERFORM pg_advisory_lock(42);
			EXECUTE 'PREPARE mine AS SELECT 1';
			EXECUTE 'DECLARE cur CURSOR WITH HOLD FOR SELECT 1';
			PERFORM nextval('public.notes_id_seq');
			IF fail THEN
				RAISE EXCEPTION 'failed on purpose';
			END IF;
			RETURN 1;
		END $$`))
	requireResult(t, b.queryAuth(t, auth, "state-acme", `SELECT public.leave_state(false)`))
	requireClean("a function")
	requireProblem(t, b.queryAuth(t, auth, "state-acme", `SELECT public.leave_state(true)`), 422, silo.EINVALID)
	requireClean("a function that failed")

	// A function that drops the API's own prepared statements, the reset's
	// among them, in the middle of a statement: the reset cannot run, and
	// the statement, rolled back, says so.
	requireResult(t, b.queryAuth(t, auth, "state-acme", `CREATE FUNCTION public.drop_statements() RETURNS int LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO notes (title) VALUES ('undone');
			PERFORM set_config('work_mem', '1GB', false);
			EXECUTE 'DEALLOCATE ALL';
			RETURN 1;
		END $$`))
	p := requireProblem(t, b.queryAuth(t, auth, "state-acme", `SELECT public.drop_statements()`), 422, silo.EINVALID)
	require.Contains(t, *p.Detail, "could not be reset, so it was rolled back")
	require.Equal(t, []string{"0"}, rowText(requireResult(t, b.queryAuth(t, auth, "state-acme", `SELECT count(*) FROM notes WHERE title = 'undone'`)).Rows[0]))
	requireClean("a function that dropped the API's statements")

	// In a transaction, committed and rolled back.
	r := b.transactionAuth(t, auth, "state-acme", `SET work_mem = '1GB'`, `SET myapp.y = 'changed'`, `SELECT public.leave_state(false)`)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	requireClean("a transaction")
	r = b.transactionAuth(t, auth, "state-acme", `SET statement_timeout = 0`, `SELECT pg_advisory_lock(42)`, `PREPARE mine AS SELECT 1`,
		`DECLARE cur CURSOR WITH HOLD FOR SELECT 1`, `LISTEN chan`, `SELECT 1/0`)
	require.Equal(t, 5, *requireProblem(t, r, 422, silo.EINVALID).Statement)
	requireClean("a transaction that failed")

	// The API's own prepared statements outlive the resets: the check,
	// sent again and again, runs prepared, and so does its answer.
	var stmts []string
	rows := requireResult(t, b.queryAuth(t, auth, "state-acme", `SELECT name FROM pg_prepared_statements WHERE NOT from_sql ORDER BY name`)).Rows
	for _, row := range rows {
		var name string
		require.NoError(t, json.Unmarshal(row[0], &name))
		stmts = append(stmts, name)
	}
	require.Contains(t, stmts, "silo_reset_last")
	require.GreaterOrEqual(t, len(stmts), 4, "the tenant's repeated statements are prepared: %v", stmts)
	// A clean session gets no cleanup, which would prepare the reset again.
	const preparedAt = `SELECT prepare_time FROM pg_prepared_statements WHERE name = 'silo_reset_last'`
	at := requireResult(t, b.queryAuth(t, auth, "state-acme", preparedAt)).Rows
	require.Len(t, at, 1)
	require.Equal(t, at, requireResult(t, b.queryAuth(t, auth, "state-acme", preparedAt)).Rows)
}
