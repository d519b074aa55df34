package pgtest_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/pgcluster"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestStart(t *testing.T) {
	t.Parallel()
	fleet := pgtest.Start(t)
	require.Len(t, fleet.Shards, 2)
	require.Same(t, fleet, pgtest.Start(t), "one fleet per test binary")

	if want := os.Getenv("SILO_PG_VERSION"); want != "" {
		require.Equal(t, want, strconv.Itoa(fleet.Major), "SILO_PG_VERSION chooses the major")
	}
	ports := map[int]bool{}
	for _, c := range []*pgcluster.Cluster{fleet.Catalog, fleet.Shards[0], fleet.Shards[1]} {
		require.True(t, c.Running())
		ports[c.Port()] = true
		var maxConns, fsync string
		var version int
		conn := connect(t, c.DSN("postgres"))
		require.NoError(t, conn.QueryRow(t.Context(), "SELECT current_setting('max_connections'), current_setting('fsync'), current_setting('server_version_num')::int").Scan(&maxConns, &fsync, &version))
		require.Equal(t, "300", maxConns)
		require.Equal(t, "off", fsync)
		require.Equal(t, fleet.Major, version/10000)
	}
	require.Len(t, ports, 3, "three distinct clusters")
}

func TestNewDatabase(t *testing.T) {
	t.Parallel()
	shard := pgtest.Start(t).Shards[0]
	a := connect(t, pgtest.NewDatabase(t, shard))
	b := connect(t, pgtest.NewDatabase(t, shard))

	_, err := a.Exec(t.Context(), "CREATE TABLE only_in_a (id int)")
	require.NoError(t, err)
	var inA, inB *string
	require.NoError(t, a.QueryRow(t.Context(), "SELECT to_regclass('only_in_a')::text").Scan(&inA))
	require.NoError(t, b.QueryRow(t.Context(), "SELECT to_regclass('only_in_a')::text").Scan(&inB))
	require.NotNil(t, inA)
	require.Nil(t, inB, "databases are isolated")

	var dbA, dbB string
	require.NoError(t, a.QueryRow(t.Context(), "SELECT current_database()").Scan(&dbA))
	require.NoError(t, b.QueryRow(t.Context(), "SELECT current_database()").Scan(&dbB))
	require.NotEqual(t, dbA, dbB)
}

func TestNewDatabaseIsDroppedAfterTest(t *testing.T) {
	t.Parallel()
	shard := pgtest.Start(t).Shards[1]
	var name string
	t.Run("uses a database", func(t *testing.T) {
		conn := connect(t, pgtest.NewDatabase(t, shard))
		require.NoError(t, conn.QueryRow(t.Context(), "SELECT current_database()").Scan(&name))
		// The open connection is forced out by the drop.
	})
	var exists bool
	conn := connect(t, shard.DSN("postgres"))
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists))
	require.NotEmpty(t, name)
	require.False(t, exists)
}
