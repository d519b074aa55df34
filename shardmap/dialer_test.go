package shardmap_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/shardmap"
)

// A tenant that keeps changing its role's password (perhaps to a verifier
// that asks every client for ten million SCRAM iterations) gets its login
// repaired a few times, then its logins refused for a while: Silo stops
// paying for them. Each repair and the block are audited.
func TestHostileLoginRepairsAreBounded(t *testing.T) {
	shardmap.SetRepairBounds(t, 0, 2, time.Minute, time.Minute)
	fleet := pgtest.Start(t)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	pool, store := catalogtest.New(t, log)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := store.CreateShard(ctx, silo.Shard{Name: "s", DSN: fleet.Shards[0].DSN("postgres")})
	require.NoError(t, err)
	sealer, err := shardmap.NewSealer(catalogtest.SecretKey)
	require.NoError(t, err)
	name := silo.NewDatabaseName()
	tn := &silo.Tenant{ID: "churn", Shard: "s", Database: name, Region: "default", State: silo.TenantActive}
	err = store.Mutate(ctx, "test", "tenant/churn", nil, func(tx pgx.Tx) error {
		_, err := store.InsertTenant(ctx, tx, *tn, sealer.Seal([]byte("the-sealed-password"), "churn"))
		return err
	})
	require.NoError(t, err)
	admin, err := pgx.Connect(ctx, fleet.Shards[0].DSN("postgres"))
	require.NoError(t, err)
	defer admin.Close(ctx)
	role := pgx.Identifier{name}.Sanitize()
	_, err = admin.Exec(ctx, "CREATE ROLE "+role+" LOGIN PASSWORD 'the-tenants-own'")
	require.NoError(t, err)
	_, err = admin.Exec(ctx, "CREATE DATABASE "+role+" OWNER "+role)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+role+" WITH (FORCE)")
		_, _ = admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+role)
	})
	d, err := shardmap.NewDialer(shardmap.DialerConfig{Store: store, Sealer: sealer, Logger: log})
	require.NoError(t, err)

	for i := range 2 { // the tenant changes it, Silo sets it back
		conn, err := d.ConnectTenant(ctx, tn, "")
		require.NoError(t, err, "repair %d", i+1)
		_, err = conn.Exec(ctx, `ALTER ROLE CURRENT_USER PASSWORD 'the-tenants-own'`)
		require.NoError(t, err)
		conn.Close(ctx)
	}
	_, err = d.ConnectTenant(ctx, tn, "")
	require.Equal(t, silo.EUNAVAILABLE, silo.ErrorCode(err), "%v", err)
	require.Contains(t, silo.ErrorMessage(err), "keeps refusing")
	start := time.Now()
	_, err = d.ConnectTenant(ctx, tn, "")
	require.Equal(t, silo.EUNAVAILABLE, silo.ErrorCode(err))
	require.Less(t, time.Since(start), 100*time.Millisecond, "refused without a login")

	var repairs, blocks int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE action = 'tenant.repair-login' AND result = 'ok'),
		count(*) FILTER (WHERE action = 'tenant.login-blocked') FROM audit_log WHERE target = 'tenant/churn'`).Scan(&repairs, &blocks))
	require.Equal(t, 2, repairs)
	require.Equal(t, 1, blocks)
}
