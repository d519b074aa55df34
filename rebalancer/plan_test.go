package rebalancer_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/rebalancer"
)

func tenants(prefix string, sizes ...int64) []rebalancer.Tenant {
	out := make([]rebalancer.Tenant, len(sizes))
	for i, b := range sizes {
		out[i] = rebalancer.Tenant{ID: fmt.Sprintf("%s%d", prefix, i), Bytes: b}
	}
	return out
}

func n(prefix string, count int) []rebalancer.Tenant {
	sizes := make([]int64, count)
	for i := range sizes {
		sizes[i] = int64(100 + i)
	}
	return tenants(prefix, sizes...)
}

// counts applies moves and returns tenants per shard.
func counts(shards []rebalancer.Shard, moves []rebalancer.Move) map[string]int {
	c := map[string]int{}
	for _, s := range shards {
		c[s.Name] = len(s.Tenants)
	}
	for _, m := range moves {
		c[m.From]--
		c[m.To]++
	}
	return c
}

func TestPlan(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		shards []rebalancer.Shard
		opts   rebalancer.Options
		want   map[string]int // tenants per shard after the plan
		moves  int
	}{
		{
			name: "a new empty shard takes its share",
			shards: []rebalancer.Shard{
				{Name: "a", Region: "eu", Weight: 1, Tenants: n("a", 10)},
				{Name: "b", Region: "eu", Weight: 1, Tenants: n("b", 10)},
				{Name: "c", Region: "eu", Weight: 1},
			},
			want:  map[string]int{"a": 7, "b": 7, "c": 6},
			moves: 6,
		},
		{
			name: "weights count",
			shards: []rebalancer.Shard{
				{Name: "big", Region: "eu", Weight: 3, Tenants: n("x", 4)},
				{Name: "small", Region: "eu", Weight: 1, Tenants: n("y", 8)},
			},
			want:  map[string]int{"big": 9, "small": 3},
			moves: 5,
		},
		{
			name: "balanced within the tolerance: nothing moves",
			shards: []rebalancer.Shard{
				{Name: "a", Region: "eu", Weight: 1, Tenants: n("a", 10)},
				{Name: "b", Region: "eu", Weight: 1, Tenants: n("b", 11)},
			},
			want: map[string]int{"a": 10, "b": 11},
		},
		{
			name: "regions are kept apart",
			shards: []rebalancer.Shard{
				{Name: "eu-1", Region: "eu", Weight: 1, Tenants: n("e", 6)},
				{Name: "us-1", Region: "us", Weight: 1},
			},
			want: map[string]int{"eu-1": 6, "us-1": 0},
		},
		{
			name: "the move limit",
			shards: []rebalancer.Shard{
				{Name: "a", Region: "eu", Weight: 1, Tenants: n("a", 20)},
				{Name: "b", Region: "eu", Weight: 1},
			},
			opts:  rebalancer.Options{MaxMoves: 3},
			want:  map[string]int{"a": 17, "b": 3},
			moves: 3,
		},
		{
			// 1,800 bytes against 200: the big tenant and a small one trade
			// places, two moves that leave both shards at 1,000 (three small
			// ones would take three).
			name: "by bytes, the fewest moves",
			shards: []rebalancer.Shard{
				{Name: "a", Region: "eu", Weight: 1, Tenants: tenants("a", 1000, 300, 300, 200)},
				{Name: "b", Region: "eu", Weight: 1, Tenants: tenants("b", 200)},
			},
			opts:  rebalancer.Options{By: rebalancer.ByBytes},
			want:  map[string]int{"a": 4, "b": 1},
			moves: 2,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			moves, err := rebalancer.Plan(tc.shards, tc.opts)
			require.NoError(t, err)
			require.Len(t, moves, tc.moves, "%+v", moves)
			require.Equal(t, tc.want, counts(tc.shards, moves))
			again, err := rebalancer.Plan(tc.shards, tc.opts)
			require.NoError(t, err)
			require.Equal(t, moves, again, "deterministic")
		})
	}
}

func TestPlanPrefersSmallTenants(t *testing.T) {
	t.Parallel()
	moves, err := rebalancer.Plan([]rebalancer.Shard{
		{Name: "a", Region: "eu", Weight: 1, Tenants: tenants("a", 500, 10, 900, 20)},
		{Name: "b", Region: "eu", Weight: 1},
	}, rebalancer.Options{})
	require.NoError(t, err)
	require.Equal(t, []rebalancer.Move{{Tenant: "a1", From: "a", To: "b", Bytes: 10}, {Tenant: "a3", From: "a", To: "b", Bytes: 20}}, moves)
}

func TestPlanBadOptions(t *testing.T) {
	t.Parallel()
	shards := []rebalancer.Shard{{Name: "a", Region: "eu", Weight: 1}}
	for _, o := range []rebalancer.Options{{By: "rows"}, {MaxMoves: -1}, {Tolerance: -0.5}} {
		_, err := rebalancer.Plan(shards, o)
		require.Error(t, err, "%+v", o)
	}
	_, err := rebalancer.Plan([]rebalancer.Shard{{Name: "z", Region: "eu", Weight: 0}}, rebalancer.Options{})
	require.Error(t, err)
}
