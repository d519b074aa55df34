package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

const dataToken = "query-test-token-0123456789"

// dataServer serves the API as silo serve does, over a fresh catalog with
// the test binary's two shards (s1, s2), with a router for the data API and
// a row limit of maxRows. It returns the API's URL.
func dataServer(t *testing.T, maxRows int) string {
	t.Helper()
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	pool, store := catalogtest.New(t, log)
	for i, name := range []string{"s1", "s2"} {
		_, err := store.CreateShard(ctx, silo.Shard{Name: name, DSN: fleet.Shards[i].DSN("postgres")})
		require.NoError(t, err)
	}
	key := make([]byte, shardmap.SecretKeyLen)
	_, _ = rand.Read(key)
	eng := catalogtest.NewEngine(t, pool, store, log, engine.Config{})
	prov, err := provisioner.New(provisioner.Config{
		Catalog: pool, Store: store, Engine: eng, SecretKey: key, Logger: log,
		WarmPoolSize: -1, MaintenanceInterval: time.Hour,
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = eng.Stop(sctx)
		_ = prov.Stop(sctx)
	})
	require.NoError(t, eng.Start(ctx))
	rt, err := router.New(router.Config{Catalog: pool, Store: store, SecretKey: key, Logger: log})
	require.NoError(t, err)
	require.NoError(t, rt.Start(ctx))
	t.Cleanup(rt.Stop)
	srv, err := api.New(api.Config{
		Catalog: store, Provisioner: prov, Router: rt, AdminToken: dataToken, Logger: log, MaxRows: maxRows,
	})
	require.NoError(t, err)
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return ts.URL
}

// Not parallel: it sets SILO_KEY.
func TestQuery(t *testing.T) {
	url := dataServer(t, 5)
	ctx := context.Background()
	t.Setenv("SILO_KEY", "")
	t.Setenv("SILO_TOKEN", "")
	admin := func(args ...string) (string, string, error) {
		t.Helper()
		return runSiloStderr(t, ctx, append(args, "--url", url, "--token", dataToken)...)
	}
	_, _, err := admin("tenant", "create", "qa", "--shard", "s1")
	require.NoError(t, err)
	_, _, err = admin("tenant", "create", "qb", "--shard", "s2")
	require.NoError(t, err)

	// Statements without rows say what they changed; arguments are
	// parameters.
	got, _, err := admin("query", "qa", "INSERT INTO notes (title, body) VALUES ($1, $2)", "hello", "it's me")
	require.NoError(t, err)
	require.Equal(t, "1 row affected\n", got)
	got, _, err = admin("query", "qa", "INSERT INTO notes (title) SELECT 'n' || g FROM generate_series(1, 3) g")
	require.NoError(t, err)
	require.Equal(t, "3 rows affected\n", got)
	got, _, err = admin("query", "qa", "SELECT id, title, body FROM notes WHERE id = $1", "1")
	require.NoError(t, err)
	require.Regexp(t, `^id\s+title\s+body\n1\s+hello\s+it's me\n$`, got)

	// Values: NULL, exact numbers, JSON for arrays and json.
	got, _, err = admin("query", "qa", `SELECT NULL AS n, 12345678901234567::bigint AS big, 1.50 AS num, ARRAY[1, 2] AS a, '{"k": [1]}'::jsonb AS j, true AS b`)
	require.NoError(t, err)
	require.Regexp(t, `^n\s+big\s+num\s+a\s+j\s+b\nNULL\s+12345678901234567\s+1\.50\s+\[1,2\]\s+\{"k":\[1\]\}\s+true\n$`, got)

	// -o json is the API's answer itself.
	got, _, err = admin("query", "qa", "SELECT id, title FROM notes WHERE id = $1", "1", "-o", "json")
	require.NoError(t, err)
	require.JSONEq(t, `{"columns":["id","title"],"rows":[[1,"hello"]],"rowsAffected":1,"truncated":false}`, got)
	require.True(t, json.Valid([]byte(got)))

	// Past the server's row limit: the rows it sent, and a note.
	got, stderr, err := admin("query", "qa", "SELECT g FROM generate_series(1, 10) g")
	require.NoError(t, err)
	require.Equal(t, "g\n1\n2\n3\n4\n5\n", got)
	require.Equal(t, "(truncated) 5 rows shown of 10: the server caps the rows and bytes of a result\n", stderr)
	got, _, err = admin("query", "qa", "SELECT g FROM generate_series(1, 10) g", "-o", "json")
	require.NoError(t, err)
	require.Contains(t, got, `"truncated": true`)

	// The statement from standard input.
	got, err = runSilo(t, ctx, "SELECT count(*) AS notes\nFROM notes\n", "query", "qa", "-", "--url", url, "--token", dataToken)
	require.NoError(t, err)
	require.Equal(t, "notes\n4\n", got)

	// A tenant key, by flag or by variable, reaches its tenant and no other.
	token, stderr, err := admin("tenant", "key", "create", "qa", "--name", "cli")
	require.NoError(t, err)
	token = strings.TrimSuffix(token, "\n")
	require.Regexp(t, `^silo_k_[a-z2-7]{12}_[a-z2-7]{52}$`, token)
	require.Contains(t, stderr, "will not be shown again")
	keyID := token[len("silo_") : len("silo_")+len("k_")+12]
	withKey := func(key string, args ...string) (string, error) {
		t.Helper()
		return runSilo(t, ctx, "", append(args, "--url", url, "--key", key)...)
	}
	got, err = withKey(token, "query", "qa", "SELECT title FROM notes WHERE id = 1")
	require.NoError(t, err)
	require.Equal(t, "title\nhello\n", got)
	t.Setenv("SILO_KEY", token)
	got, err = runSilo(t, ctx, "", "query", "qa", "SELECT 1 AS one", "--url", url)
	require.NoError(t, err)
	require.Equal(t, "one\n1\n", got)
	// The key wins over the admin token: it is the narrower credential.
	_, err = runSilo(t, ctx, "", "query", "qb", "SELECT 1", "--url", url, "--token", dataToken)
	require.ErrorContains(t, err, `the key is not valid for tenant "qb" (EFORBIDDEN)`)
	t.Setenv("SILO_KEY", "")
	_, err = withKey(token, "query", "qb", "INSERT INTO notes (title) VALUES ('intruder')")
	require.ErrorContains(t, err, "(EFORBIDDEN)")
	got, _, err = admin("query", "qb", "SELECT count(*) FROM notes")
	require.NoError(t, err)
	require.Equal(t, "count\n0\n", got)
	_, err = runSilo(t, ctx, "", "shard", "list", "--url", url, "--token", token)
	require.ErrorContains(t, err, "needs the admin token (EUNAUTHORIZED)")

	_, _, err = admin("tenant", "key", "revoke", "qa", keyID)
	require.NoError(t, err)
	_, err = withKey(token, "query", "qa", "SELECT 1")
	require.ErrorContains(t, err, "was revoked (EUNAUTHORIZED)")

	// Errors: one line, with PostgreSQL's SQLSTATE when it has one.
	_, _, err = admin("query", "qa", "SELECT * FROM missing")
	require.EqualError(t, err, `relation "missing" does not exist (EINVALID, SQLSTATE 42P01)`)
	_, _, err = admin("query", "qa", "SELECT $1::int", "abc")
	require.ErrorContains(t, err, "(EINVALID, SQLSTATE 22P02)")
	_, _, err = admin("query", "qa", "  ")
	require.EqualError(t, err, "sql is empty: send one SQL statement (EINVALID)")
	_, _, err = admin("query", "nope", "SELECT 1")
	require.ErrorContains(t, err, `tenant "nope" not found (ENOTFOUND)`)
	_, _, err = admin("tenant", "suspend", "qa")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, _, err := admin("query", "qa", "SELECT 1")
		return err != nil && strings.Contains(err.Error(), "(ESUSPENDED)")
	}, 5*time.Second, 20*time.Millisecond)
}

func TestQueryCLIErrors(t *testing.T) {
	ctx := context.Background()
	t.Setenv("SILO_TOKEN", "")
	t.Setenv("SILO_KEY", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"query", "acme", "SELECT 1"}, "no credentials: pass --key (or set SILO_KEY) with a tenant key, or --token (or SILO_TOKEN) with the admin token"},
		{[]string{"query", "acme"}, "requires at least 2 arg(s)"},
		{[]string{"query", "acme", "SELECT 1", "--key", "k", "--url", "http://127.0.0.1:1"}, "cannot reach the Silo API"},
		{[]string{"tenant", "key", "create", "acme"}, "no admin token"},
		{[]string{"tenant", "key", "revoke", "acme"}, "accepts 2 arg(s)"},
		{[]string{"tenant", "key", "list"}, "accepts 1 arg(s)"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := runSilo(t, ctx, "", tc.args...)
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "\n")
		})
	}
}

var keyListRE = regexp.MustCompile(`^ID\s+NAME\s+CREATED\s+LAST USED\s+REVOKED\n`)
