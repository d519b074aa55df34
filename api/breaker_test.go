package api_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/pgcluster"
)

// A shard that goes down: its tenants get 503 with Retry-After, from the
// shard's breaker, within a few seconds; a tenant on another shard is
// served throughout. The shard is a cluster of this test's own.
func TestDataAPIShardDown(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	dir, err := os.MkdirTemp("", "api-shard-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	down, err := pgcluster.Start(b.ctx, pgcluster.Config{Dir: filepath.Join(dir, "down"), Fast: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = down.Stop(context.Background()) })
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: "down", DSN: down.DSN("postgres")})
	require.NoError(t, err)

	r := b.do(t, "POST", "/v1/tenants?wait=30s", `{"id":"doomed","shard":"down"}`)
	require.Equal(t, 201, r.status, "body: %s", r.body)
	b.createTenant(t, "steady-one")
	require.Equal(t, 200, b.query(t, "doomed", "SELECT 1").status)

	require.NoError(t, down.Stop(b.ctx))
	var got response
	require.Eventually(t, func() bool {
		got = b.query(t, "doomed", "SELECT 1")
		return got.status == 503 && got.header.Get("Retry-After") != ""
	}, 10*time.Second, 100*time.Millisecond)
	require.Equal(t, "EUNAVAILABLE", string(got.problem(t).Code))
	secs, err := strconv.Atoi(got.header.Get("Retry-After"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, secs, 1)
	require.Equal(t, 200, b.query(t, "steady-one", "SELECT 1").status, "other shards are served")
}
