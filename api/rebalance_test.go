package api_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
)

// A plan over real shards: four tenants on one of two shards of a region
// plan two moves; the other region is left alone; bad options are refused.
func TestRebalancePlan(t *testing.T) {
	t.Parallel()
	b := setup(t, serverOpts{rebalance: true})
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
