package shardmap_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/shardmap"
)

// rawShardRow returns a shard's catalog row as PostgreSQL prints it, every
// column included, and its sealed DSN's bytes.
func rawShardRow(t *testing.T, ctx context.Context, pool *pgxpool.Pool, name string) (string, []byte) {
	t.Helper()
	var row string
	var sealed []byte
	require.NoError(t, pool.QueryRow(ctx, `SELECT s::text, s.dsn_sealed FROM shards s WHERE name = $1`, name).Scan(&row, &sealed))
	return row, sealed
}

// auditText returns the whole audit log as text.
func auditText(t *testing.T, ctx context.Context, pool *pgxpool.Pool) string {
	t.Helper()
	var text string
	require.NoError(t, pool.QueryRow(ctx, `SELECT coalesce(string_agg(a::text, E'\n'), '') FROM audit_log a`).Scan(&text))
	return text
}

func requireSQLState(t *testing.T, err error, state string) {
	t.Helper()
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	require.True(t, ok, "want SQLSTATE %s, got %v", state, err)
	require.Equal(t, state, pgErr.Code, "error: %v", err)
}

// A registered shard's DSN is sealed in the catalog: its password appears
// nowhere in the row, the audit log or the logs, the catalog refuses a
// plaintext DSN written behind Silo's back, and a sealed DSN moved to
// another shard's row does not open.
func TestHostileCatalogHoldsNoPlaintextDSN(t *testing.T) {
	t.Parallel()
	s, b := setup(t)
	shard := b.fleet.Shards[0]
	dsn, password := shard.DSN("postgres"), shard.Password()
	require.NotEmpty(t, password)
	for _, name := range []string{"eu-1", "eu-2"} {
		_, err := s.CreateShard(b.ctx, silo.Shard{Name: name, DSN: dsn})
		require.NoError(t, err)
	}

	row, sealed := rawShardRow(t, b.ctx, b.pool, "eu-1")
	require.NotContains(t, row, password)
	require.NotContains(t, row, fmt.Sprint(shard.Port()), "nothing of the DSN is in the clear")
	require.False(t, bytes.Contains(sealed, []byte(password)))
	var plaintext *string
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT dsn FROM shards WHERE name = 'eu-1'`).Scan(&plaintext))
	require.Nil(t, plaintext)
	require.NotContains(t, auditText(t, b.ctx, b.pool), password)
	require.NotContains(t, b.logs.String(), password)
	got, err := s.ShardDSN(b.ctx, "eu-1")
	require.NoError(t, err)
	require.Equal(t, dsn, got)

	// Writes behind Silo's back: the catalog takes no plaintext DSN, and no
	// shard without a sealed one.
	_, err = b.pool.Exec(b.ctx, `INSERT INTO shards (name, dsn, region, weight) VALUES ('eu-3', $1, 'default', 100)`, dsn)
	requireSQLState(t, err, "23514")
	_, err = b.pool.Exec(b.ctx, `INSERT INTO shards (name, dsn, dsn_sealed, region, weight) VALUES ('eu-3', $1, $2, 'default', 100)`, dsn, sealed)
	requireSQLState(t, err, "23514")
	_, err = b.pool.Exec(b.ctx, `UPDATE shards SET dsn = $1 WHERE name = 'eu-1'`, dsn)
	requireSQLState(t, err, "23514")
	_, err = b.pool.Exec(b.ctx, `UPDATE shards SET dsn_sealed = NULL WHERE name = 'eu-1'`)
	requireSQLState(t, err, "23514")

	// eu-1's sealed DSN copied into eu-2's row is bound to eu-1.
	_, err = b.pool.Exec(b.ctx, `UPDATE shards SET dsn_sealed = $1 WHERE name = 'eu-2'`, sealed)
	require.NoError(t, err)
	_, err = s.ShardDSN(b.ctx, "eu-2")
	requireCode(t, err, silo.EINTERNAL)
	require.ErrorContains(t, err, "shard/eu-2")
	require.NotContains(t, err.Error(), password)
	_, err = s.GetShard(b.ctx, "eu-2")
	requireCode(t, err, silo.EINTERNAL)
}

// A catalog that an earlier Silo left, with a plaintext DSN, is upgraded:
// the migration and the sealing step, run by two servers at once, leave the
// DSN sealed once and the plaintext gone.
func TestHostileUpgradeSealsPlaintextDSNs(t *testing.T) {
	t.Parallel()
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, pool := catalogtest.NewAtVersion(t, 6)
	shard := fleet.Shards[0]
	dsn, password := shard.DSN("postgres"), shard.Password()
	_, err := pool.Exec(ctx, `INSERT INTO shards (name, dsn, region, weight) VALUES ('old-1', $1, 'default', 100), ('old-2', $1, 'eu', 50)`, dsn)
	require.NoError(t, err)

	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	_, err = migrations.ApplyCatalog(ctx, pool, log)
	require.NoError(t, err)
	before := catalogtest.NewStore(t, pool, log, catalogtest.SecretKey)
	_, err = before.ShardDSN(ctx, "old-1")
	requireCode(t, err, silo.EINTERNAL)
	require.ErrorContains(t, err, "not sealed yet")
	require.NotContains(t, err.Error(), password)

	// Two servers start together.
	var wg sync.WaitGroup
	sealed := make([]int, 2)
	errs := make([]error, 2)
	for i := range 2 {
		store := catalogtest.NewStore(t, pool, log, catalogtest.SecretKey)
		wg.Go(func() { sealed[i], errs[i] = store.SealPlaintextDSNs(ctx) })
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	require.Equal(t, 2, sealed[0]+sealed[1], "each DSN sealed once")

	for _, name := range []string{"old-1", "old-2"} {
		row, raw := rawShardRow(t, ctx, pool, name)
		require.NotContains(t, row, password)
		require.NotEmpty(t, raw)
		got, err := before.ShardDSN(ctx, name)
		require.NoError(t, err)
		require.Equal(t, dsn, got)
	}
	var plaintext int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM shards WHERE dsn IS NOT NULL`).Scan(&plaintext))
	require.Zero(t, plaintext)
	// Every row now meets the constraint that new rows already had to.
	_, err = pool.Exec(ctx, `ALTER TABLE shards VALIDATE CONSTRAINT shards_dsn_sealed_only`)
	require.NoError(t, err)

	audit, err := before.ListAudit(ctx, shardmap.AuditFilter{Action: "secrets.seal-dsns"}, silo.Page{})
	require.NoError(t, err)
	var named []any
	for _, e := range audit.Items {
		require.Equal(t, silo.AuditResultOK, e.Result)
		if shards, ok := e.Params["shards"].([]any); ok {
			named = append(named, shards...)
		}
	}
	require.ElementsMatch(t, []any{"old-1", "old-2"}, named)
	require.NotContains(t, auditText(t, ctx, pool), password)
	require.NotContains(t, logs.String(), password)

	// A later start finds nothing to do and writes nothing.
	n, err := before.SealPlaintextDSNs(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	again, err := before.ListAudit(ctx, shardmap.AuditFilter{Action: "secrets.seal-dsns"}, silo.Page{})
	require.NoError(t, err)
	require.Len(t, again.Items, len(audit.Items))
}

// insertTenant records a tenant with a sealed password.
func insertTenant(t *testing.T, ctx context.Context, pool *pgxpool.Pool, s *shardmap.Store, id, shard string, sealed []byte) {
	t.Helper()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := s.InsertTenant(ctx, tx, silo.Tenant{ID: id, Shard: shard, Database: "t_" + strings.ReplaceAll(id, "-", "_"),
			Region: silo.DefaultRegion, State: silo.TenantActive}, sealed)
		return err
	})
	require.NoError(t, err)
}

// Key rotation through the catalog: secrets sealed under A (in both
// formats) are read by servers with B current and A previous, moved to B by
// a reseal in batches, and then read with B alone. A secret under a key
// nobody has is reported, and left alone.
func TestResealCatalog(t *testing.T) {
	t.Parallel()
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctx = silo.WithActor(ctx, silo.Actor{Name: "tester"})
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	pool := catalogtest.NewPool(t, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	a, b, c := v1Key, newKey(t), newKey(t)
	underA := catalogtest.NewStore(t, pool, log, a)
	dsn := fleet.Shards[0].DSN("postgres")
	_, err := underA.CreateShard(ctx, silo.Shard{Name: "eu-1", DSN: dsn})
	require.NoError(t, err)

	passwords := map[string]string{"acme": v1Plaintext} // sealed in format 1, under A
	insertTenant(t, ctx, pool, underA, "acme", "eu-1", v1Sealed)
	for i := range 5 {
		id := fmt.Sprintf("t-%d", i)
		passwords[id] = "password-of-" + id
		insertTenant(t, ctx, pool, underA, id, "eu-1", newSealer(t, a).Seal([]byte(passwords[id]), id))
	}
	insertTenant(t, ctx, pool, underA, "lost", "eu-1", newSealer(t, c).Seal([]byte("password-of-lost"), "lost"))
	insertTenant(t, ctx, pool, underA, "tomb", "eu-1", nil) // a tombstone has none

	rotating := catalogtest.NewStore(t, pool, log, append(bytes.Clone(b), a...))
	onlyB := catalogtest.NewStore(t, pool, log, b)
	got, err := rotating.ShardDSN(ctx, "eu-1")
	require.NoError(t, err)
	require.Equal(t, dsn, got)
	_, err = onlyB.ShardDSN(ctx, "eu-1")
	requireCode(t, err, silo.EINTERNAL)
	require.ErrorContains(t, err, "sealed under key "+shardmap.KeyID(a))

	res, err := rotating.Reseal(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, shardmap.KeyID(b), res.KeyID)
	require.Equal(t, shardmap.ResealCount{Moved: 6, Failed: 1}, res.TenantPasswords)
	require.Equal(t, shardmap.ResealCount{Moved: 1}, res.ShardDSNs)
	require.Len(t, res.Failures, 1)
	require.Contains(t, res.Failures[0], "the secret of lost is sealed under key "+shardmap.KeyID(c))
	require.NotContains(t, res.Failures[0], "password-of-lost")

	again, err := rotating.Reseal(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, shardmap.ResealCount{Current: 6, Failed: 1}, again.TenantPasswords, "a second reseal moves nothing")
	require.Equal(t, shardmap.ResealCount{Current: 1}, again.ShardDSNs)

	// Key A can go.
	got, err = onlyB.ShardDSN(ctx, "eu-1")
	require.NoError(t, err)
	require.Equal(t, dsn, got)
	for id, pw := range passwords {
		sealed, err := onlyB.TenantSecret(ctx, id)
		require.NoError(t, err)
		plain, err := newSealer(t, b).Open(sealed, id)
		require.NoError(t, err, id)
		require.Equal(t, pw, string(plain))
	}
	var epochs int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT sum(epoch) FROM tenants`).Scan(&epochs))
	require.EqualValues(t, len(passwords)+2, epochs, "a reseal is no change of a tenant")

	// Audited: batches that changed something, with their counts.
	moved := map[string]float64{}
	for _, target := range []string{"secrets/tenants", "secrets/shards"} {
		audit, err := rotating.ListAudit(ctx, shardmap.AuditFilter{Target: target}, silo.Page{})
		require.NoError(t, err)
		require.NotEmpty(t, audit.Items, target)
		for _, e := range audit.Items {
			require.Equal(t, "secrets.reseal", e.Action)
			require.Equal(t, "tester", e.Actor)
			require.Equal(t, shardmap.KeyID(b), e.Params["key"])
			moved[target] += e.Params["moved"].(float64)
		}
	}
	require.Equal(t, map[string]float64{"secrets/tenants": 6, "secrets/shards": 1}, moved)
	text := auditText(t, ctx, pool) + logs.String()
	for _, pw := range passwords {
		require.NotContains(t, text, pw)
	}
	require.NotContains(t, text, fleet.Shards[0].Password())
}

// A Store without a Sealer stores and reads no DSN at all.
func TestStoreWithoutSealer(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	s, err := shardmap.New(shardmap.Config{Pool: b.pool})
	require.NoError(t, err)
	_, err = s.CreateShard(b.ctx, silo.Shard{Name: "eu-1", DSN: b.fleet.Shards[0].DSN("postgres")})
	requireCode(t, err, silo.EINTERNAL)
	require.Empty(t, shardNames(t, s, b.ctx))
	_, err = s.Reseal(b.ctx, 0)
	requireCode(t, err, silo.EINTERNAL)
}
