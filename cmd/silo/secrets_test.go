package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/shardmap"
)

const (
	keyA = "1111111111111111111111111111111111111111111111111111111111111111"
	keyB = "2222222222222222222222222222222222222222222222222222222222222222"
)

func keyID(t *testing.T, key string) string {
	t.Helper()
	raw, err := hex.DecodeString(key)
	require.NoError(t, err)
	return shardmap.KeyID(raw)
}

func ring(t *testing.T, keys ...string) []byte {
	t.Helper()
	raw, err := hex.DecodeString(strings.Join(keys, ""))
	require.NoError(t, err)
	return raw
}

// `silo secrets reseal` moves every secret sealed under the previous key to
// the current one, says how many it moved, and moves nothing the second
// time; without the previous key it moves nothing and says which key is
// missing.
func TestSecretsReseal(t *testing.T) {
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	catalog := pgtest.NewDatabase(t, fleet.Catalog)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	pool, err := shardmap.OpenCatalog(ctx, catalog, 4, 5*time.Second, 30*time.Second)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	_, err = migrations.ApplyCatalog(ctx, pool, log)
	require.NoError(t, err)

	underA := catalogtest.NewStore(t, pool, log, ring(t, keyA))
	dsn := fleet.Shards[0].DSN("postgres")
	_, err = underA.CreateShard(ctx, silo.Shard{Name: "eu-1", DSN: dsn})
	require.NoError(t, err)
	sealerA, err := shardmap.NewSealer(ring(t, keyA))
	require.NoError(t, err)
	for _, id := range []string{"acme", "globex", "initech"} {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			_, err := underA.InsertTenant(ctx, tx, silo.Tenant{ID: id, Shard: "eu-1", Database: "t_" + id,
				Region: silo.DefaultRegion, State: silo.TenantActive}, sealerA.Seal([]byte("password-of-"+id), id))
			return err
		})
		require.NoError(t, err)
	}
	t.Setenv("SILO_CATALOG_DSN", catalog)

	// The new key alone: nothing opens, nothing changes.
	t.Setenv("SILO_SECRET_KEY", keyB)
	t.Setenv("SILO_SECRET_KEY_PREVIOUS", "")
	before := sealedValues(t, ctx, pool)
	out, err := runSilo(t, ctx, "", "secrets", "reseal")
	require.ErrorContains(t, err, "4 secrets did not open with these keys")
	require.Contains(t, out, "tenant passwords  0      0        3")
	require.Contains(t, out, "did not open: the secret of acme is sealed under key "+keyID(t, keyA))
	require.NotContains(t, out, "password-of-")
	require.Equal(t, before, sealedValues(t, ctx, pool))

	// With the old key as the previous one.
	t.Setenv("SILO_SECRET_KEY_PREVIOUS", keyA)
	out, err = runSilo(t, ctx, "", "secrets", "reseal", "--batch-size", "2")
	require.NoError(t, err)
	require.Equal(t, "SECRETS           MOVED  CURRENT  FAILED\n"+
		"tenant passwords  3      0        0\n"+
		"shard DSNs        1      0        0\n"+
		"\nCurrent key: "+keyID(t, keyB)+".\n", out)

	out, err = runSilo(t, ctx, "", "secrets", "reseal", "-o", "json")
	require.NoError(t, err)
	var got map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &got))
	require.Equal(t, map[string]any{
		"keyId":           keyID(t, keyB),
		"tenantPasswords": map[string]any{"moved": 0.0, "current": 3.0, "failed": 0.0},
		"shardDsns":       map[string]any{"moved": 0.0, "current": 1.0, "failed": 0.0},
		"failures":        []any{},
	}, got)

	// Key A can go.
	onlyB := catalogtest.NewStore(t, pool, log, ring(t, keyB))
	opened, err := onlyB.ShardDSN(ctx, "eu-1")
	require.NoError(t, err)
	require.Equal(t, dsn, opened)
	audit, err := onlyB.ListAudit(ctx, shardmap.AuditFilter{Action: "secrets.reseal"}, silo.Page{})
	require.NoError(t, err)
	require.NotEmpty(t, audit.Items)
	for _, e := range audit.Items {
		require.Equal(t, "cli", e.Actor)
	}
}

// sealedValues returns every sealed value in the catalog.
func sealedValues(t *testing.T, ctx context.Context, pool *pgxpool.Pool) [][]byte {
	t.Helper()
	rows, err := pool.Query(ctx, `
		SELECT password_sealed FROM tenants WHERE password_sealed IS NOT NULL
		UNION ALL SELECT dsn_sealed FROM shards ORDER BY 1`)
	require.NoError(t, err)
	values, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	require.NoError(t, err)
	return values
}

func TestSecretsResealErrors(t *testing.T) {
	fleet := pgtest.Start(t)
	ctx := context.Background()
	notCatalog := pgtest.NewDatabase(t, fleet.Catalog)
	oldCatalog, _ := catalogtest.NewAtVersion(t, 6)
	t.Setenv("SILO_CATALOG_DSN", "")
	t.Setenv("SILO_SECRET_KEY", "")
	t.Setenv("SILO_SECRET_KEY_PREVIOUS", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--secret-key", keyA}, "--catalog-dsn (or SILO_CATALOG_DSN) is required"},
		{[]string{"--catalog-dsn", notCatalog}, "--secret-key (or SILO_SECRET_KEY) is required"},
		{[]string{"--catalog-dsn", notCatalog, "--secret-key", "abc"}, "--secret-key: the secret key must be 64 hex characters"},
		{[]string{"--catalog-dsn", notCatalog, "--secret-key", keyA, "--secret-key-previous", keyB + ",nope"}, "--secret-key-previous: previous key 2 of 2"},
		{[]string{"--catalog-dsn", notCatalog, "--secret-key", keyA}, "this database is not a Silo catalog"},
		{[]string{"--catalog-dsn", oldCatalog, "--secret-key", keyA}, "the catalog is at version 6, before sealed shard DSNs (7)"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := runSilo(t, ctx, "", append([]string{"secrets", "reseal"}, tc.args...)...)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// `silo serve` over a catalog an earlier Silo left seals its plaintext DSN
// before it serves, with the current key, and with a metrics token guards
// /metrics.
func TestHostileServeSealsDSNsAndGuardsMetrics(t *testing.T) {
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	catalog, pool := catalogtest.NewAtVersion(t, 6)
	shard := fleet.Shards[0]
	dsn := shard.DSN("postgres")
	_, err := pool.Exec(ctx, `INSERT INTO shards (name, dsn, region, weight) VALUES ('old-1', $1, 'default', 100)`, dsn)
	require.NoError(t, err)

	const adminToken, metricsToken = "serve-test-token-0123456789", "metrics-token-0123456789"
	t.Setenv("SILO_ADMIN_TOKEN", adminToken)
	t.Setenv("SILO_SECRET_KEY", keyB)
	t.Setenv("SILO_SECRET_KEY_PREVIOUS", keyA)
	t.Setenv("SILO_METRICS_TOKEN", metricsToken)
	t.Setenv("SILO_CATALOG_DSN", catalog)
	var out, errOut syncBuffer
	stop := background(t, &out, &errOut, "serve", "--listen", "127.0.0.1:0")
	addrRE := regexp.MustCompile(`"msg":"silo serving".*"addr":"([^"]+)"`)
	var addr string
	for deadline := time.Now().Add(30 * time.Second); addr == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if m := addrRE.FindStringSubmatch(errOut.String()); m != nil {
			addr = m[1]
		}
	}
	require.NotEmpty(t, addr, "no address logged: %s", errOut.String())

	var plaintext *string
	var sealed []byte
	require.NoError(t, pool.QueryRow(ctx, `SELECT dsn, dsn_sealed FROM shards WHERE name = 'old-1'`).Scan(&plaintext, &sealed))
	require.Nil(t, plaintext, "the plaintext DSN is gone")
	require.False(t, bytes.Contains(sealed, []byte(shard.Password())))
	sealerB, err := shardmap.NewSealer(ring(t, keyB))
	require.NoError(t, err)
	opened, err := sealerB.Open(sealed, "shard/old-1")
	require.NoError(t, err, "sealed under the current key")
	require.Equal(t, dsn, string(opened))

	metrics := func(auth string) int {
		req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/metrics", nil)
		require.NoError(t, err)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, 401, metrics(""))
	require.Equal(t, 401, metrics("Bearer "+adminToken))
	require.Equal(t, 200, metrics("Bearer "+metricsToken))

	got, err := runSilo(t, ctx, "", "shard", "list", "-o", "json", "--url", "http://"+addr, "--token", adminToken)
	require.NoError(t, err)
	require.Contains(t, got, silo.RedactDSN(dsn))
	require.NotContains(t, got, shard.Password())

	require.NoError(t, stop())
	logs := errOut.String()
	require.Contains(t, logs, `"msg":"plaintext shard DSNs sealed"`)
	require.Regexp(t, `"msg":"secret keys","current":"`+keyID(t, keyB)+`","previous":\["`+keyID(t, keyA)+`"\]`, logs)
	for _, secret := range []string{shard.Password(), keyA, keyB, metricsToken} {
		require.NotContains(t, logs, secret)
	}
}
