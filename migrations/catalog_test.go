package migrations_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/shardmap"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Servers that start together must apply each migration exactly once.
func TestApplyCatalogConcurrently(t *testing.T) {
	t.Parallel()
	fleet := pgtest.Start(t)
	dsn := pgtest.NewDatabase(t, fleet.Catalog)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))

	const servers = 4
	versions := make([]int64, servers)
	errs := make([]error, servers)
	var wg sync.WaitGroup
	for i := range servers {
		wg.Go(func() {
			pool, err := shardmap.OpenCatalog(ctx, dsn, 2, 5*time.Second, 30*time.Second)
			if err != nil {
				errs[i] = err
				return
			}
			defer pool.Close()
			versions[i], errs[i] = migrations.ApplyCatalog(ctx, pool, log)
		})
	}
	wg.Wait()
	latest, err := migrations.LatestVersion(migrations.CatalogFS())
	require.NoError(t, err)
	for i := range servers {
		require.NoError(t, errs[i])
		require.Equal(t, latest, versions[i])
	}

	pool, err := shardmap.OpenCatalog(ctx, dsn, 2, 5*time.Second, 30*time.Second)
	require.NoError(t, err)
	defer pool.Close()
	var applied int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM silo_catalog_migrations WHERE version_id > 0`).Scan(&applied))
	require.EqualValues(t, latest, applied, "each migration recorded once")
	var tables int
	require.NoError(t, pool.QueryRow(ctx, `
		SELECT count(*) FROM pg_tables
		WHERE schemaname = 'public' AND tablename IN ('shards', 'tenants', 'audit_log')`).Scan(&tables))
	require.Equal(t, 3, tables)

	// A second start finds nothing to do.
	v, err := migrations.ApplyCatalog(ctx, pool, log)
	require.NoError(t, err)
	require.Equal(t, latest, v)
	var riverTables int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename = 'river_job'`).Scan(&riverTables))
	require.Equal(t, 1, riverTables, "River's tables live in the catalog")
}
