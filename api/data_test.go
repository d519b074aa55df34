package api_test

import (
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
)

// createTenant creates an active tenant on shard s1 (cluster 0) through the
// API, following its operation if the request's time runs out first.
func (b *bundle) createTenant(t *testing.T, id string) {
	t.Helper()
	r := b.do(t, "POST", "/v1/tenants", `{"id":"`+id+`","shard":"s1"}`)
	if r.status == 202 {
		require.Equal(t, api.OperationStateSucceeded, b.await(t, r.header.Get("Location")).State)
		return
	}
	require.Equal(t, 201, r.status, "body: %s", r.body)
}

// query posts one statement with the admin token.
func (b *bundle) query(t *testing.T, tenant, sql string, params ...any) response {
	t.Helper()
	return b.queryAuth(t, "Bearer "+token, tenant, sql, params...)
}

func (b *bundle) queryAuth(t *testing.T, auth, tenant, sql string, params ...any) response {
	t.Helper()
	body := map[string]any{"sql": sql}
	if params != nil {
		body["params"] = params
	}
	return b.doAuth(t, auth, "POST", "/v1/tenants/"+tenant+"/query", jsonBody(t, body))
}

// transaction posts statements, each a SQL string or a map with sql and
// params, with the admin token.
func (b *bundle) transaction(t *testing.T, tenant string, stmts ...any) response {
	t.Helper()
	var list []any
	for _, st := range stmts {
		if sql, ok := st.(string); ok {
			st = map[string]any{"sql": sql}
		}
		list = append(list, st)
	}
	if list == nil {
		list = []any{}
	}
	return b.do(t, "POST", "/v1/tenants/"+tenant+"/transaction", jsonBody(t, map[string]any{"statements": list}))
}

// rawResult is a QueryResult whose rows keep the exact JSON of each value.
type rawResult struct {
	Columns      []string            `json:"columns"`
	Rows         [][]json.RawMessage `json:"rows"`
	RowsAffected int64               `json:"rowsAffected"`
	Truncated    bool                `json:"truncated"`
}

// rowText is the JSON of each value of a row, as text.
func rowText(row []json.RawMessage) []string {
	out := make([]string, len(row))
	for i, v := range row {
		out[i] = string(v)
	}
	return out
}

func requireResult(t *testing.T, r response) rawResult {
	t.Helper()
	require.Equal(t, 200, r.status, "body: %s", r.body)
	return decode[rawResult](t, r)
}

func requireProblem(t *testing.T, r response, status int, code string) api.Problem {
	t.Helper()
	require.Equal(t, status, r.status, "body: %s", r.body)
	p := r.problem(t)
	require.Equal(t, api.ProblemCode(code), p.Code, "detail: %s", *p.Detail)
	return p
}

func TestQuery(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "q-acme")

	res := requireResult(t, b.query(t, "q-acme", `INSERT INTO notes (title, body) VALUES ($1, $2) RETURNING id, title`, "hello", "world"))
	require.Equal(t, []string{"id", "title"}, res.Columns)
	require.Equal(t, [][]string{{"1", `"hello"`}}, [][]string{rowText(res.Rows[0])})
	require.EqualValues(t, 1, res.RowsAffected)
	require.False(t, res.Truncated)

	// A statement without rows: no columns, and the rows it changed.
	res = requireResult(t, b.query(t, "q-acme", `UPDATE notes SET body = 'changed'`))
	require.Empty(t, res.Columns)
	require.Empty(t, res.Rows)
	require.EqualValues(t, 1, res.RowsAffected)
	require.JSONEq(t, `{"columns":[],"rows":[],"rowsAffected":1,"truncated":false}`, string(b.query(t, "q-acme", `UPDATE notes SET body = 'again'`).body))

	// Values: JSON's own types where they fit, text where they do not.
	// The statement is sent unnamed, then prepared: both answer alike.
	values := func() rawResult {
		return requireResult(t, b.query(t, "q-acme", `SELECT
		1::int AS i, 12345678901234567::bigint AS big, 1.50::numeric AS n, 'x'::text AS t, true AS bo,
		NULL::text AS nu, '\xdeadbeef'::bytea AS by, '2024-01-02'::date AS d,
		'2024-01-02 03:04:05.5'::timestamp AS ts, '2024-01-02 03:04:05+02'::timestamptz AS tz,
		'{"a": [1, 2.50]}'::jsonb AS j, '[1,  2]'::json AS js, ARRAY[1, 2] AS arr, ARRAY['a', NULL] AS tarr,
		'NaN'::float8 AS nan, '-Infinity'::float8 AS ninf, 0.25::float4 AS f4,
		'10.0.0.0/8'::cidr AS net, '1 day 2 hours'::interval AS iv,
		'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, 'a'::"char" AS ch, 'infinity'::date AS dinf,
		ARRAY['2024-01-02'::date] AS darr, ARRAY[1.5::numeric] AS narr, ARRAY['\x01'::bytea] AS barr`))
	}
	res = values()
	require.Equal(t, res, values())
	require.Equal(t, res, values())
	require.Equal(t, []string{"i", "big", "n", "t", "bo", "nu", "by", "d", "ts", "tz", "j", "js", "arr", "tarr",
		"nan", "ninf", "f4", "net", "iv", "u", "ch", "dinf", "darr", "narr", "barr"}, res.Columns)
	require.Equal(t, []string{
		`1`, `12345678901234567`, `"1.50"`, `"x"`, `true`, `null`, `"3q2+7w=="`, `"2024-01-02"`,
		`"2024-01-02T03:04:05.5"`, `"2024-01-02T01:04:05Z"`, `{"a":[1,2.50]}`, `[1,2]`, `[1,2]`, `["a",null]`,
		`"NaN"`, `"-Infinity"`, `0.25`, `"10.0.0.0/8"`, `"1 day 02:00:00"`,
		`"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`, `"a"`, `"infinity"`, `["2024-01-02"]`, `["1.5"]`, `["AQ=="]`,
	}, rowText(res.Rows[0]))

	// Parameters are text; PostgreSQL infers their types. Numbers keep
	// their exact literal, and JSON values their JSON.
	for range 3 {
		res = requireResult(t, b.query(t, "q-acme",
			`SELECT $1::int + 1 AS n, $2 AS s, $3::boolean AS b, $4::text IS NULL AS isnull, $5::jsonb ->> 'k' AS k, $6::numeric AS exact, $7::int[] AS ints`,
			41, "x", true, nil, map[string]any{"k": "v"}, json.Number("12345678901234567890.50"), "{1,2}"))
		require.Equal(t, []string{`42`, `"x"`, `true`, `true`, `"v"`, `"12345678901234567890.50"`, `[1,2]`}, rowText(res.Rows[0]))
	}
	res = requireResult(t, b.query(t, "q-acme", `SELECT title FROM notes WHERE id = $1`, "1"))
	require.Equal(t, [][]string{{`"hello"`}}, [][]string{rowText(res.Rows[0])})
	require.EqualValues(t, 1, res.RowsAffected)

	// A comment alone is an empty statement, not an error.
	res = requireResult(t, b.query(t, "q-acme", `-- nothing`))
	require.Empty(t, res.Columns)

	// Statements that cannot run in a transaction run alone, before the
	// session's reset; one that leaves a transaction open costs its
	// connection, not the next call.
	for range 2 {
		requireResult(t, b.query(t, "q-acme", `VACUUM notes`))
		requireResult(t, b.query(t, "q-acme", `CREATE INDEX CONCURRENTLY IF NOT EXISTS notes_title ON notes (title)`))
		requireResult(t, b.query(t, "q-acme", `BEGIN`))
		res = requireResult(t, b.query(t, "q-acme", `SELECT count(*) FROM notes`))
		require.Equal(t, []string{"1"}, rowText(res.Rows[0]))
	}

	// The tenant's own role and database; no way to another database.
	res = requireResult(t, b.query(t, "q-acme", `SELECT current_user, current_database()`))
	tn, err := b.store.GetTenant(b.ctx, "q-acme")
	require.NoError(t, err)
	require.Equal(t, []string{`"` + tn.Database + `"`, `"` + tn.Database + `"`}, rowText(res.Rows[0]))
}

func TestTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "tx-acme")

	r := b.transaction(t, "tx-acme",
		map[string]any{"sql": `INSERT INTO notes (title) VALUES ($1) RETURNING id`, "params": []any{"one"}},
		`INSERT INTO notes (title) VALUES ('two')`,
		`SELECT title FROM notes ORDER BY id`)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	out := decode[struct{ Results []rawResult }](t, r)
	require.Len(t, out.Results, 3)
	require.Equal(t, []string{"id"}, out.Results[0].Columns)
	require.EqualValues(t, 1, out.Results[0].RowsAffected)
	require.Empty(t, out.Results[1].Columns)
	require.EqualValues(t, 1, out.Results[1].RowsAffected)
	require.Equal(t, [][]string{{`"one"`}, {`"two"`}}, [][]string{rowText(out.Results[2].Rows[0]), rowText(out.Results[2].Rows[1])})

	count := func() string {
		t.Helper()
		return rowText(requireResult(t, b.query(t, "tx-acme", `SELECT count(*) FROM notes`)).Rows[0])[0]
	}
	require.Equal(t, "2", count())

	// The second statement fails: the first is rolled back, and the
	// problem names the statement.
	r = b.transaction(t, "tx-acme", `INSERT INTO notes (title) VALUES ('doomed')`, `SELECT nope FROM missing`, `SELECT 1`)
	p := requireProblem(t, r, 422, silo.EINVALID)
	require.NotNil(t, p.Statement)
	require.Equal(t, 1, *p.Statement)
	require.Equal(t, "42P01", *p.Sqlstate)
	require.NotNil(t, p.Position)
	require.Equal(t, `statements[1]: relation "missing" does not exist`, *p.Detail)
	require.Equal(t, "2", count(), "nothing of a failed transaction stays")

	// Statements that would end the transaction are refused before
	// anything runs; a savepoint's rollback is fine.
	for i, sql := range []string{"COMMIT", " /* a /* nested */ comment */ rollback", "-- x\nEND", "abort work", "ROLLBACK AND CHAIN", "prepare transaction 'x'"} {
		r = b.transaction(t, "tx-acme", `INSERT INTO notes (title) VALUES ('doomed')`, sql)
		p = requireProblem(t, r, 422, silo.EINVALID)
		require.Equal(t, 1, *p.Statement, "statement %d: %q", i, sql)
		require.Contains(t, *p.Detail, "statements[1]: it would end the transaction")
		require.Nil(t, p.Sqlstate)
	}
	r = b.transaction(t, "tx-acme", `SAVEPOINT a`, `INSERT INTO notes (title) VALUES ('undone')`,
		`ROLLBACK TO SAVEPOINT a`, `rollback transaction to a`, `INSERT INTO notes (title) VALUES ('three')`)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.Equal(t, "3", count())

	// 1 to 100 statements; bad statements are named.
	var many []any
	for range api.MaxStatements + 1 {
		many = append(many, map[string]any{"sql": "SELECT 1"})
	}
	for _, tc := range []struct {
		body   string
		status int
		code   string
		detail string
		index  *int
	}{
		{`{"statements":[]}`, 422, silo.EINVALID, "1 to 100 statements, not 0", nil},
		{`{}`, 422, silo.EINVALID, "1 to 100 statements, not 0", nil},
		{jsonBody(t, map[string]any{"statements": many}), 422, silo.EINVALID, "not 101", nil},
		{`{"statements":[{"sql":"SELECT 1"},{"sql":"  "}]}`, 422, silo.EINVALID, "statements[1]: sql is empty", ptr(1)},
		{`{"statements":[{"sql":"SELECT 1","colour":"red"}]}`, 400, silo.EMALFORMED, "colour", nil},
		{`{"statements":"SELECT 1"}`, 400, silo.EMALFORMED, "not valid JSON", nil},
	} {
		r = b.do(t, "POST", "/v1/tenants/tx-acme/transaction", tc.body)
		p = requireProblem(t, r, tc.status, tc.code)
		require.Contains(t, *p.Detail, tc.detail)
		require.Equal(t, tc.index, p.Statement)
	}
	require.Equal(t, "3", count())
}

// A statement sent again is prepared and cached on its connection. When
// DDL changes what it returns, or the tenant's SQL deallocates it, PostgreSQL
// refuses it before it runs: the call is retried unprepared and answers as
// if nothing were cached, in a query and in a transaction.
func TestPreparedStatementsGoStale(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "stale-acme")
	requireResult(t, b.query(t, "stale-acme", `CREATE TABLE wide (a int)`))
	requireResult(t, b.query(t, "stale-acme", `INSERT INTO wide VALUES (1)`))

	check := func(columns []string, row []string) {
		t.Helper()
		for range 4 {
			res := requireResult(t, b.query(t, "stale-acme", `SELECT * FROM wide`))
			require.Equal(t, columns, res.Columns)
			require.Equal(t, row, rowText(res.Rows[0]))
			r := b.transaction(t, "stale-acme", `SELECT * FROM wide`, `INSERT INTO wide SELECT * FROM wide WHERE false`)
			require.Equal(t, 200, r.status, "body: %s", r.body)
			out := decode[struct{ Results []rawResult }](t, r)
			require.Equal(t, columns, out.Results[0].Columns)
			require.Equal(t, row, rowText(out.Results[0].Rows[0]))
		}
	}
	check([]string{"a"}, []string{"1"})
	requireResult(t, b.query(t, "stale-acme", `ALTER TABLE wide ADD COLUMN b int DEFAULT 7`))
	check([]string{"a", "b"}, []string{"1", "7"})
	requireResult(t, b.query(t, "stale-acme", `DEALLOCATE ALL`))
	check([]string{"a", "b"}, []string{"1", "7"})

	// The tenant's own prepared statements are the tenant's business:
	// their errors come back as they are.
	requireResult(t, b.query(t, "stale-acme", `DEALLOCATE ALL`))
	for range 2 {
		p := requireProblem(t, b.query(t, "stale-acme", `EXECUTE mine`), 422, silo.EINVALID)
		require.Equal(t, "26000", *p.Sqlstate)
	}

	// Metrics: the statements by how they were sent, and the reruns (after
	// the ALTER and after the DEALLOCATE at least).
	metric := func(name string) int {
		t.Helper()
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\d+)$`).FindStringSubmatch(string(b.doAuth(t, "", "GET", "/metrics", "").body))
		require.NotNil(t, m, "no %s", name)
		n, err := strconv.Atoi(m[1])
		require.NoError(t, err)
		return n
	}
	require.GreaterOrEqual(t, metric(`silo_data_unprepared_reruns_total`), 2)
	require.Greater(t, metric(`silo_data_statements_total{mode="prepared"}`), 20)
	require.Greater(t, metric(`silo_data_statements_total{mode="unnamed"}`), 5)
}

func ptr[T any](v T) *T { return &v }

func TestDataBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "bad-acme")

	for _, tc := range []struct {
		name     string
		body     string
		status   int
		code     string
		detail   string
		sqlstate string
	}{
		{"empty sql", `{"sql":""}`, 422, silo.EINVALID, "sql is empty", ""},
		{"blank sql", `{"sql":" \n\t"}`, 422, silo.EINVALID, "sql is empty", ""},
		{"no sql", `{"params":[1]}`, 422, silo.EINVALID, "sql is empty", ""},
		{"no body", ``, 400, silo.EMALFORMED, "empty", ""},
		{"unknown field", `{"sql":"SELECT 1","colour":"red"}`, 400, silo.EMALFORMED, "colour", ""},
		{"params not a list", `{"sql":"SELECT $1","params":"x"}`, 400, silo.EMALFORMED, "params", ""},
		{"syntax error", `{"sql":"SELEC 1"}`, 422, silo.EINVALID, `syntax error at or near "SELEC"`, "42601"},
		{"unknown table", `{"sql":"SELECT * FROM missing"}`, 422, silo.EINVALID, `relation "missing" does not exist`, "42P01"},
		{"two statements", `{"sql":"SELECT 1; SELECT 2"}`, 422, silo.EINVALID, "multiple commands", "42601"},
		{"too few params", `{"sql":"SELECT $1::int, $2::int","params":[1]}`, 422, silo.EINVALID, "bind message supplies 1 parameters, but prepared statement \"\" requires 2", "08P01"},
		{"too many params", `{"sql":"SELECT 1","params":[1, 2]}`, 422, silo.EINVALID, "bind message supplies 2 parameters", "08P01"},
		{"wrong param type", `{"sql":"SELECT $1::int","params":["abc"]}`, 422, silo.EINVALID, `invalid input syntax for type integer: "abc"`, "22P02"},
		{"param out of range", `{"sql":"SELECT $1::smallint","params":[100000]}`, 422, silo.EINVALID, "out of range", "22003"},
		{"division by zero", `{"sql":"SELECT 1/0"}`, 422, silo.EINVALID, "division by zero", "22012"},
		{"no privilege", `{"sql":"CREATE DATABASE other"}`, 422, silo.EINVALID, "permission denied", "42501"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Sent unnamed the first time, prepared after: the same answer.
			for range 3 {
				r := b.do(t, "POST", "/v1/tenants/bad-acme/query", tc.body)
				p := requireProblem(t, r, tc.status, tc.code)
				require.Contains(t, *p.Detail, tc.detail)
				if tc.sqlstate == "" {
					require.Nil(t, p.Sqlstate)
				} else {
					require.Equal(t, tc.sqlstate, *p.Sqlstate)
				}
				require.Nil(t, p.Statement)
			}
		})
	}
	for range 3 {
		r := b.do(t, "POST", "/v1/tenants/bad-acme/query", `{"sql":"SELECT 1 FROM notes WHERE nope = 1"}`)
		p := requireProblem(t, r, 422, silo.EINVALID)
		require.Equal(t, 27, *p.Position, "where PostgreSQL found the error: nope")
	}

	// After all that, the tenant's connections work.
	res := requireResult(t, b.query(t, "bad-acme", `SELECT 1`))
	require.Equal(t, []string{"1"}, rowText(res.Rows[0]))
}

func TestDataTenantStates(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "st-acme")
	requireResult(t, b.query(t, "st-acme", `SELECT 1`)) // its route is cached now

	p := requireProblem(t, b.query(t, "st-nope", `SELECT 1`), 404, silo.ENOTFOUND)
	require.Contains(t, *p.Detail, "st-nope")

	r := b.do(t, "POST", "/v1/tenants/st-acme/suspend", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.Eventually(t, func() bool { return b.query(t, "st-acme", `SELECT 1`).status == 423 }, 5*time.Second, 20*time.Millisecond)
	p = requireProblem(t, b.query(t, "st-acme", `SELECT 1`), 423, silo.ESUSPENDED)
	require.Contains(t, *p.Detail, "suspended")
	p = requireProblem(t, b.transaction(t, "st-acme", `SELECT 1`), 423, silo.ESUSPENDED)
	require.Nil(t, p.Statement)

	r = b.do(t, "POST", "/v1/tenants/st-acme/resume", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.Eventually(t, func() bool { return b.query(t, "st-acme", `SELECT 1`).status == 200 }, 5*time.Second, 20*time.Millisecond)

	r = b.do(t, "DELETE", "/v1/tenants/st-acme", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.Eventually(t, func() bool { return b.query(t, "st-acme", `SELECT 1`).status == 404 }, 5*time.Second, 20*time.Millisecond)
	requireProblem(t, b.transaction(t, "st-acme", `SELECT 1`), 404, silo.ENOTFOUND)
}

func TestDataAPIDisabled(t *testing.T) {
	t.Parallel()
	b := setup(t, serverOpts{noRouter: true})
	for _, r := range []response{b.query(t, "acme", `SELECT 1`), b.transaction(t, "acme", `SELECT 1`)} {
		p := requireProblem(t, r, 503, silo.EUNAVAILABLE)
		require.Equal(t, "the data API is not enabled on this server", *p.Detail)
		require.Equal(t, "2", r.header.Get("Retry-After"))
	}
	// Other 503s keep no Retry-After: it is the data API's promise.
	require.Equal(t, 200, b.doAuth(t, "", "GET", "/readyz", "").status)
}

// A statement past the query timeout is cancelled by PostgreSQL itself:
// the answer is a quick 504, and nothing runs on the shard any more.
func TestQueryTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t, serverOpts{queryTimeout: time.Second})
	b.addShards(t)
	b.createTenant(t, "slow-acme")
	shard, err := pgx.Connect(b.ctx, b.fleet.Shards[0].DSN("postgres"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = shard.Close(context.Background()) })
	active := func() int {
		t.Helper()
		var n int
		require.NoError(t, shard.QueryRow(b.ctx, `
			SELECT count(*) FROM pg_stat_activity
			WHERE datname = 't_slow_acme' AND state = 'active' AND query LIKE '%pg_sleep%'`).Scan(&n))
		return n
	}

	start := time.Now()
	r := b.query(t, "slow-acme", `SELECT pg_sleep(5)`)
	elapsed := time.Since(start)
	p := requireProblem(t, r, 504, silo.ETIMEOUT)
	require.Equal(t, "57014", *p.Sqlstate)
	require.Contains(t, *p.Detail, "query timeout of 1s")
	require.Less(t, elapsed, 2500*time.Millisecond)
	require.Zero(t, active(), "the statement no longer runs on the shard")
	res := requireResult(t, b.query(t, "slow-acme", `SELECT 1`))
	require.Equal(t, []string{"1"}, rowText(res.Rows[0]), "the connection survives")

	// In a transaction: each statement is stopped by PostgreSQL, and the
	// whole call by its deadline; either way nothing is committed.
	r = b.transaction(t, "slow-acme", `INSERT INTO notes (title) VALUES ('late')`, `SELECT pg_sleep(5)`)
	p = requireProblem(t, r, 504, silo.ETIMEOUT)
	require.Equal(t, 1, *p.Statement)
	require.Equal(t, "57014", *p.Sqlstate)
	require.Zero(t, active())

	start = time.Now()
	r = b.transaction(t, "slow-acme", `INSERT INTO notes (title) VALUES ('late')`, `SELECT pg_sleep(0.6)`, `SELECT pg_sleep(0.6)`)
	elapsed = time.Since(start)
	p = requireProblem(t, r, 504, silo.ETIMEOUT)
	require.Equal(t, 2, *p.Statement)
	require.Nil(t, p.Sqlstate, "the deadline, not PostgreSQL, ended it")
	require.Less(t, elapsed, 2*time.Second)
	require.Eventually(t, func() bool { return active() == 0 }, 500*time.Millisecond, 20*time.Millisecond,
		"the statement is cancelled, not left to finish")

	// Nor can the tenant's SQL lift the timeout: when the deadline passes,
	// pgx sends the server a cancel request as it closes the connection.
	start = time.Now()
	r = b.transaction(t, "slow-acme", `SET LOCAL statement_timeout = 0`, `INSERT INTO notes (title) VALUES ('late')`, `SELECT pg_sleep(30)`)
	elapsed = time.Since(start)
	p = requireProblem(t, r, 504, silo.ETIMEOUT)
	require.Equal(t, 2, *p.Statement)
	require.Less(t, elapsed, 2*time.Second)
	require.Eventually(t, func() bool { return active() == 0 }, 500*time.Millisecond, 20*time.Millisecond)
	res = requireResult(t, b.query(t, "slow-acme", `SELECT count(*) FROM notes`))
	require.Equal(t, []string{"0"}, rowText(res.Rows[0]), "nothing of the timed-out transactions stays")
	// A SET, RESET or DISCARD on the session: the next call sets the
	// timeout again.
	for _, sql := range []string{`SET statement_timeout = 0`, `RESET statement_timeout`, `DISCARD ALL`} {
		requireResult(t, b.query(t, "slow-acme", sql))
		res = requireResult(t, b.query(t, "slow-acme", `SHOW statement_timeout`))
		require.NotEqual(t, `"0"`, rowText(res.Rows[0])[0], "after %s", sql)
	}
	r = b.transaction(t, "slow-acme", `SET statement_timeout = 0`)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	res = requireResult(t, b.query(t, "slow-acme", `SHOW statement_timeout`))
	require.NotEqual(t, `"0"`, rowText(res.Rows[0])[0], "after a SET in a transaction")

	r = b.query(t, "slow-acme", `SELECT set_config('statement_timeout', '0', false), pg_sleep(5)`)
	requireProblem(t, r, 504, silo.ETIMEOUT)
	require.Eventually(t, func() bool { return active() == 0 }, 500*time.Millisecond, 20*time.Millisecond)

}

// The data API runs under the query timeout, not the request timeout.
func TestQueryTimeoutNotRequestTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t, serverOpts{requestTimeout: time.Second, queryTimeout: 10 * time.Second})
	b.addShards(t)
	b.createTenant(t, "slow-beta")
	requireResult(t, b.query(t, "slow-beta", `SELECT pg_sleep(1.5)`))
	r := b.transaction(t, "slow-beta", `SELECT pg_sleep(0.8)`, `SELECT pg_sleep(0.8)`)
	require.Equal(t, 200, r.status, "body: %s", r.body)
}

func TestDataLimits(t *testing.T) {
	t.Parallel()
	b := setup(t, serverOpts{maxRows: 3, maxResultBytes: 100})
	b.addShards(t)
	b.createTenant(t, "lim-acme")

	// The row limit: the rest is read and dropped, and counted.
	res := requireResult(t, b.query(t, "lim-acme", `SELECT g FROM generate_series(1, 10) g`))
	require.Len(t, res.Rows, 3)
	require.True(t, res.Truncated)
	require.EqualValues(t, 10, res.RowsAffected)
	res = requireResult(t, b.query(t, "lim-acme", `SELECT g FROM generate_series(1, 3) g`))
	require.Len(t, res.Rows, 3)
	require.False(t, res.Truncated, "exactly the limit is not truncated")

	// The size limit: each row is ["xxx…"] of 34 bytes; a third would
	// pass 100.
	res = requireResult(t, b.query(t, "lim-acme", `SELECT repeat('x', 30) FROM generate_series(1, 3)`))
	require.Len(t, res.Rows, 2)
	require.True(t, res.Truncated)
	require.EqualValues(t, 3, res.RowsAffected)
	res = requireResult(t, b.query(t, "lim-acme", `SELECT repeat('x', 200)`))
	require.Empty(t, res.Rows, "a row over the limit on its own")
	require.True(t, res.Truncated)

	// The limits hold for a transaction's results together; the
	// statements past them still run.
	r := b.transaction(t, "lim-acme", `SELECT g FROM generate_series(1, 2) g`, `SELECT g FROM generate_series(1, 2) g`,
		`INSERT INTO notes (title) SELECT 'n' || g FROM generate_series(1, 5) g RETURNING id`)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	out := decode[struct{ Results []rawResult }](t, r)
	require.Len(t, out.Results[0].Rows, 2)
	require.False(t, out.Results[0].Truncated)
	require.Len(t, out.Results[1].Rows, 1)
	require.True(t, out.Results[1].Truncated)
	require.Empty(t, out.Results[2].Rows)
	require.True(t, out.Results[2].Truncated)
	require.EqualValues(t, 5, out.Results[2].RowsAffected)
	res = requireResult(t, b.query(t, "lim-acme", `SELECT count(*) FROM notes`))
	require.Equal(t, []string{"5"}, rowText(res.Rows[0]))
}

// Tenants' data stays apart whatever the SQL.
func TestDataIsolation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "iso-a")
	b.createTenant(t, "iso-b")
	requireResult(t, b.query(t, "iso-a", `INSERT INTO notes (title) VALUES ('secret of a')`))
	res := requireResult(t, b.query(t, "iso-b", `SELECT count(*) FROM notes`))
	require.Equal(t, []string{"0"}, rowText(res.Rows[0]))
	r := b.query(t, "iso-b", `SELECT * FROM dblink('dbname=t_iso_a', 'SELECT title FROM notes') AS x(title text)`)
	requireProblem(t, r, 422, silo.EINVALID)
	require.NotContains(t, string(r.body), "secret of a")
	for _, sql := range []string{`\c t_iso_a`, `SET ROLE t_iso_a`, `SELECT * FROM t_iso_a.public.notes`} {
		r = b.query(t, "iso-b", sql)
		require.Equal(t, 422, r.status, "%s: %s", sql, r.body)
		require.NotContains(t, string(r.body), "secret of a")
	}
	res = requireResult(t, b.query(t, "iso-a", `SELECT title FROM notes`))
	require.Equal(t, [][]string{{`"secret of a"`}}, [][]string{rowText(res.Rows[0])})
}
