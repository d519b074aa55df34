package shardmap

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/silo-db/silo"
)

// Defaults of the tenant gauge (Config.TenantGaugeMaxAge).
const (
	DefaultTenantGaugeMaxAge = 15 * time.Second
	// tenantGaugeTimeout bounds the gauge's read of the catalog, so that a
	// scrape is answered, with the last counts, while the catalog hangs.
	tenantGaugeTimeout = 2 * time.Second
)

// liveStates are the tenant states the gauge reports: purged tenants are
// tombstones, which only ever grow.
var liveStates = []string{
	string(silo.TenantProvisioning), string(silo.TenantActive), string(silo.TenantSuspended),
	string(silo.TenantMoving), string(silo.TenantDeleted),
}

// TenantCount is how many tenants of one shard are in one state.
type TenantCount struct {
	Shard string
	State silo.TenantState
	Count int
}

// TenantCounts returns how many tenants each registered shard has in each
// state but purged, 0 included. It returns EUNAVAILABLE when the catalog
// does not answer; ctx bounds the query.
func (s *Store) TenantCounts(ctx context.Context) ([]TenantCount, error) {
	// One statement for the gauge, run at most once per TenantGaugeMaxAge
	// by each server: per shard and state, an index-only count on
	// tenants_shard_state_id_idx.
	rows, err := s.pool.Query(ctx, `
		SELECT s.name, st.state, count(t.id)
		FROM shards s
		CROSS JOIN unnest($1::text[]) AS st(state)
		LEFT JOIN tenants t ON t.shard = s.name AND t.state = st.state
		GROUP BY s.name, st.state
		ORDER BY s.name, st.state`, liveStates)
	if err != nil {
		return nil, CatalogError(err, "count tenants")
	}
	defer rows.Close()
	var out []TenantCount
	for rows.Next() {
		var c TenantCount
		if err := rows.Scan(&c.Shard, &c.State, &c.Count); err != nil {
			return nil, CatalogError(err, "count tenants")
		}
		out = append(out, c)
	}
	return out, CatalogError(rows.Err(), "count tenants")
}

var tenantsDesc = prometheus.NewDesc("silo_tenants",
	"Tenants by shard and state (purged ones left out), as this server last read them from the catalog: at scrape time, at most once per 15 s.",
	[]string{"shard", "state"}, nil)

// tenantCollector reports silo_tenants from the catalog at scrape time. A
// scrape reads the catalog only when the last read is older than maxAge, so
// that however often and from however many places /metrics is scraped,
// each server runs the query at most once per maxAge. When the read fails,
// the last counts serve (silo_catalog_up says why they are stale).
type tenantCollector struct {
	store  *Store
	maxAge time.Duration

	mu     sync.Mutex // held during a read: concurrent scrapes wait for it
	readAt time.Time  // of the last read, successful or not
	counts []TenantCount
	failed bool
}

func (c *tenantCollector) Describe(ch chan<- *prometheus.Desc) { ch <- tenantsDesc }

func (c *tenantCollector) Collect(ch chan<- prometheus.Metric) {
	for _, tc := range c.read() {
		ch <- prometheus.MustNewConstMetric(tenantsDesc, prometheus.GaugeValue, float64(tc.Count), tc.Shard, string(tc.State))
	}
}

func (c *tenantCollector) read() []TenantCount {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.readAt) < c.maxAge {
		return c.counts
	}
	ctx, cancel := context.WithTimeout(context.Background(), tenantGaugeTimeout)
	defer cancel()
	counts, err := c.store.TenantCounts(ctx)
	c.readAt = time.Now()
	if err != nil {
		if !c.failed {
			c.store.log.Warn("silo_tenants: cannot count tenants; the last counts serve", "err", err)
		}
		c.failed = true
		return c.counts
	}
	c.counts, c.failed = counts, false
	return c.counts
}
