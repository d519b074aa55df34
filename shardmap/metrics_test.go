package shardmap_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// silo_tenants counts each shard's tenants by state from the catalog, 0
// included and purged ones left out; a scrape reads the catalog again only
// once the counts are older than TenantGaugeMaxAge.
func TestTenantGauge(t *testing.T) {
	t.Parallel()
	s, b := setup(t)
	dsn := b.fleet.Shards[0].DSN("postgres")
	for _, name := range []string{"a", "b"} {
		_, err := s.CreateShard(b.ctx, silo.Shard{Name: name, DSN: dsn, Region: "eu"})
		require.NoError(t, err)
	}
	var tenants []*silo.Tenant
	for i, shard := range []string{"a", "a", "a", "b"} {
		id := fmt.Sprintf("gauge-%d", i)
		tn, err := s.CreateTenant(b.ctx, silo.Tenant{ID: id, Shard: shard, Database: silo.DatabaseName(id), Region: "eu", State: silo.TenantActive})
		require.NoError(t, err)
		tenants = append(tenants, tn)
	}
	tenants[1].State = silo.TenantSuspended
	_, err := s.UpdateTenant(b.ctx, *tenants[1])
	require.NoError(t, err)
	tenants[2].State = silo.TenantPurged
	_, err = s.UpdateTenant(b.ctx, *tenants[2])
	require.NoError(t, err)

	// Two servers' views of one catalog: one reads it at most hourly, the
	// other at every scrape.
	hourly, fresh := prometheus.NewRegistry(), prometheus.NewRegistry()
	_, err = shardmap.New(shardmap.Config{Pool: b.pool, Registry: hourly, TenantGaugeMaxAge: time.Hour})
	require.NoError(t, err)
	_, err = shardmap.New(shardmap.Config{Pool: b.pool, Registry: fresh, TenantGaugeMaxAge: time.Nanosecond})
	require.NoError(t, err)

	want := map[string]float64{
		"a/provisioning": 0, "a/active": 1, "a/suspended": 1, "a/moving": 0, "a/deleted": 0,
		"b/provisioning": 0, "b/active": 1, "b/suspended": 0, "b/moving": 0, "b/deleted": 0,
	}
	require.Equal(t, want, tenantGauge(t, hourly))
	require.Equal(t, want, tenantGauge(t, fresh))

	tenants[3].State = silo.TenantDeleted
	_, err = s.UpdateTenant(b.ctx, *tenants[3])
	require.NoError(t, err)
	require.Equal(t, want, tenantGauge(t, hourly), "within TenantGaugeMaxAge, the catalog is not read again")
	want["b/active"], want["b/deleted"] = 0, 1
	require.Equal(t, want, tenantGauge(t, fresh))
}

// tenantGauge gathers silo_tenants from reg, keyed shard/state; it checks
// that no label holds a tenant id.
func tenantGauge(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, f := range families {
		require.Equal(t, "silo_tenants", f.GetName())
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			require.Len(t, labels, 2, "shard and state only")
			out[labels["shard"]+"/"+labels["state"]] = m.GetGauge().GetValue()
		}
	}
	return out
}
