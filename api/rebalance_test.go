package api_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
)

// A plan over real shards: four tenants on one of two shards of a region
// plan two moves; the other region is left alone; bad options are refused.
func TestRebalancePlan(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t) // s1 (eu), s2 (us)
	_, err := b.store.CreateShard(b.ctx, silo.Shard{Name: "s3", DSN: b.fleet.Shards[1].DSN("postgres"), Region: "eu"})
	require.NoError(t, err)
	for _, id := range []string{"rb-1", "rb-2", "rb-3", "rb-4"} {
		b.createTenant(t, id) // on s1
	}
	for _, by := range []string{"tenants", "bytes"} {
		plan := decode[api.RebalancePlan](t, b.do(t, "GET", "/v1/rebalance/plan?by="+by, ""))
		require.Equal(t, api.RebalancePlanBy(by), plan.By)
		require.Len(t, plan.Moves, 2, by)
		for _, m := range plan.Moves {
			require.Equal(t, "s1", m.From)
			require.Equal(t, "s3", m.To)
			require.Positive(t, m.Bytes)
		}
		require.Len(t, plan.Shards, 3)
		for _, sh := range plan.Shards {
			switch sh.Shard {
			case "s1":
				require.Equal(t, 4, sh.Tenants)
				require.Equal(t, 2, sh.TenantsAfter)
			case "s3":
				require.Equal(t, 2, sh.TenantsAfter)
			case "s2":
				require.Zero(t, sh.TenantsAfter, "another region")
			}
		}
	}
	plan := decode[api.RebalancePlan](t, b.do(t, "GET", "/v1/rebalance/plan?maxMoves=1", ""))
	require.Len(t, plan.Moves, 1)
	for _, q := range []string{"?by=rows", "?maxMoves=-1"} {
		r := b.do(t, "GET", "/v1/rebalance/plan"+q, "")
		require.Equal(t, 422, r.status, "%s: %s", q, r.body)
	}
	tn := decode[api.Tenant](t, b.do(t, "GET", "/v1/tenants/rb-1", ""))
	require.Equal(t, "s1", tn.Shard, "a plan moves nothing")
}

// Draining a shard moves its active tenants off, to the other active shard
// of their region; rebalance apply starts the plan's moves.
func TestDrainAndApply(t *testing.T) {
	t.Parallel()
	if !hasPgDump(t) {
		t.Skip("moves copy the schema with pg_dump, and there is none for this server")
	}
	b := setup(t)
	b.addShards(t) // s1 (eu), s2 (us)
	_, err := b.store.CreateShard(b.ctx, silo.Shard{Name: "s3", DSN: b.fleet.Shards[1].DSN("postgres"), Region: "eu"})
	require.NoError(t, err)
	ids := []string{"dr-1", "dr-2", "dr-3"}
	for _, id := range ids {
		b.createTenant(t, id) // on s1
	}
	r := b.do(t, "POST", "/v1/shards/s1/drain", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.Eventually(t, func() bool {
		for _, id := range ids {
			if decode[api.Tenant](t, b.do(t, "GET", "/v1/tenants/"+id, "")).Shard != "s3" {
				return false
			}
		}
		return true
	}, 90*time.Second, 200*time.Millisecond, "every tenant moved to s3")
	q := b.query(t, "dr-2", "SELECT count(*) FROM notes")
	require.Equal(t, 200, q.status, "served on its new shard: %s", q.body)

	// s1 back in service and empty: applying the plan moves one back.
	r = b.do(t, "POST", "/v1/shards/s1/activate", "")
	require.Equal(t, 200, r.status)
	// A drained tenant's move may still be cleaning up on its old shard,
	// and a tenant runs one operation at a time: such a move does not start
	// (it says why), and the apply is tried again.
	var started api.RebalanceStarted
	require.Eventually(t, func() bool {
		r = b.do(t, "POST", "/v1/rebalance/apply", `{"by":"tenants"}`)
		require.Equal(t, 202, r.status, "body: %s", r.body)
		started = decode[api.RebalanceStarted](t, r)
		require.Len(t, started.Moves, 1)
		return started.Moves[0].OperationId != nil
	}, 30*time.Second, 200*time.Millisecond)
	require.Equal(t, "s1", started.Moves[0].To)
	require.Eventually(t, func() bool {
		return decode[api.Tenant](t, b.do(t, "GET", "/v1/tenants/"+started.Moves[0].Tenant, "")).Shard == "s1"
	}, 60*time.Second, 200*time.Millisecond)
	r = b.do(t, "POST", "/v1/rebalance/apply", `{"by":"rows"}`)
	require.Equal(t, 422, r.status)
}
