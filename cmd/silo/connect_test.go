package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/api"
)

// TestDevTenantConnect: silo dev runs the wire-protocol endpoint with TLS,
// says where in its banner and DIR/env, and `silo tenant connect` prints a
// connection string that a client takes as it is.
func TestDevTenantConnect(t *testing.T) {
	t.Parallel()
	dir := devDir(t)
	ctx := context.Background()
	var out, errOut syncBuffer
	stop := background(t, &out, &errOut, "dev", "--dir", dir, "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0",
		"--shards", "1", "--warm-pool-size", "0")
	url, token := waitEnv(t, dir, stop)
	env, err := os.ReadFile(filepath.Join(dir, "env"))
	require.NoError(t, err)
	pgAddr := envRE.FindStringSubmatch(string(env))[4]
	require.NotEmpty(t, pgAddr, "DIR/env names the endpoint")
	require.Contains(t, out.String(), "PostgreSQL clients connect at "+pgAddr+" (TLS with a self-signed certificate: sslmode=require)")
	silo := func(args ...string) (string, string, error) {
		t.Helper()
		return runSiloStderr(t, ctx, append(args, "--url", url, "--token", token)...)
	}
	_, _, err = silo("tenant", "create", "acme")
	require.NoError(t, err)

	got, stderr, err := silo("tenant", "connect", "acme")
	require.NoError(t, err)
	dsnRE := regexp.MustCompile(`^postgres://acme:(silo_k_[a-z2-7]{12}_[a-z2-7]{52})@` + regexp.QuoteMeta(pgAddr) + `/acme\?sslmode=require\n$`)
	m := dsnRE.FindStringSubmatch(got)
	require.NotNil(t, m, "dsn: %q", got)
	require.Regexp(t, `^Key k_[a-z2-7]{12} \(connect\) of tenant acme is made`, stderr)
	dsn := strings.TrimSpace(got)

	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	var ssl bool
	require.NoError(t, conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl))
	require.False(t, ssl, "TLS ends at the endpoint; the shard connection is on loopback")
	_, isTLS := conn.PgConn().Conn().(*tls.Conn)
	require.True(t, isTLS, "the client's connection is TLS")
	_, err = conn.Exec(ctx, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))

	// The same key reaches the HTTP data API.
	got, _, err = runSiloStderr(t, ctx, "query", "acme", "SELECT count(*) FROM t", "--url", url, "--key", m[1])
	require.NoError(t, err)
	require.Equal(t, "count\n2\n", got)

	if psql, err := exec.LookPath("psql"); err == nil {
		out, err := exec.CommandContext(ctx, psql, dsn, "-Atc", "SELECT sum(x) FROM t").CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Equal(t, "3\n", string(out))
	}

	// -o json: the API's object; the token is in it, once.
	got, _, err = silo("tenant", "connect", "acme", "--name", "reporting", "-o", "json")
	require.NoError(t, err)
	var c api.TenantConnection
	require.NoError(t, json.Unmarshal([]byte(got), &c))
	require.Equal(t, "reporting", c.Name)
	require.Equal(t, "acme", c.User)
	require.Equal(t, "acme", c.Database)
	require.Equal(t, api.TenantConnectionSslmode("require"), c.Sslmode)
	require.Contains(t, c.Dsn, c.Token)

	// Bad input: one line, a code, nothing made.
	_, _, err = silo("tenant", "connect", "nope")
	require.ErrorContains(t, err, `tenant "nope" not found (ENOTFOUND)`)
	_, _, err = silo("tenant", "connect", "acme", "--name", "")
	require.ErrorContains(t, err, "(EINVALID)")
	got, _, err = silo("tenant", "key", "list", "acme", "-o", "json")
	require.NoError(t, err)
	var keys []api.TenantKey
	require.NoError(t, json.Unmarshal([]byte(got), &keys))
	require.Len(t, keys, 2)
}
