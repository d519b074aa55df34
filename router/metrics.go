package router

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/silo-db/silo"
)

type metrics struct {
	routeHits, routeMisses prometheus.Counter
	outageHits             prometheus.Counter
	waits                  *prometheus.CounterVec
	waitTime               *prometheus.HistogramVec
	queries                *prometheus.HistogramVec
	loginRepairs           prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		routeHits:   prometheus.NewCounter(prometheus.CounterOpts{Name: "silo_route_cache_hits_total", Help: "Tenant routes found in the cache."}),
		routeMisses: prometheus.NewCounter(prometheus.CounterOpts{Name: "silo_route_cache_misses_total", Help: "Tenant routes read from the catalog."}),
		outageHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "silo_route_cache_outage_hits_total", Help: "Tenant routes found in the cache while the catalog was down: requests served that an uncached tenant could not be.",
		}),
		waits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "silo_pool_waits_total", Help: "Connection requests that had to wait for the shard's budget, by shard.",
		}, []string{"shard"}),
		waitTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "silo_pool_wait_seconds", Help: "Time spent waiting for a connection, by shard.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"shard"}),
		loginRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "silo_tenant_login_repairs_total", Help: "Tenant logins refused for a wrong password (the tenant changed it), whose password Silo set back.",
		}),
		queries: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "silo_query_duration_seconds", Help: "Time of work run on tenant connections, by shard and outcome (ok or an error code).",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
		}, []string{"shard", "outcome"}),
	}
}

func (m *metrics) observeWait(shard string, waited time.Duration) {
	if waited > 0 {
		m.waits.WithLabelValues(shard).Inc()
		m.waitTime.WithLabelValues(shard).Observe(waited.Seconds())
	}
}

func (m *metrics) observeQuery(s *shardPool, d time.Duration, err error) {
	if err == nil {
		s.okQueries.Observe(d.Seconds())
		return
	}
	m.queries.WithLabelValues(s.name, silo.ErrorCode(err)).Observe(d.Seconds())
}

// register adds the metrics, and gauges of each shard's pool read at
// scrape time, to reg.
func (m *metrics) register(reg prometheus.Registerer, r *Router) error {
	catalogUp := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "silo_catalog_up", Help: "1 while the catalog answers this server's probes, 0 while it is down.",
	}, func() float64 {
		if r.health.Up() {
			return 1
		}
		return 0
	})
	for _, c := range []prometheus.Collector{m.routeHits, m.routeMisses, m.outageHits, m.waits, m.waitTime, m.queries, m.loginRepairs, catalogUp, poolCollector{r}} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// poolCollector reports each shard's connections in use and idle, and
// whether its breaker is open, for the shards this router has served.
type poolCollector struct{ r *Router }

var (
	inUseDesc   = prometheus.NewDesc("silo_pool_connections_in_use", "Connections to the shard lent out, all tenants.", []string{"shard"}, nil)
	idleDesc    = prometheus.NewDesc("silo_pool_connections_idle", "Idle connections to the shard, all tenants.", []string{"shard"}, nil)
	breakerDesc = prometheus.NewDesc("silo_shard_breaker_open",
		"1 while the shard's breaker is open (its tenants' requests refused at once, but a trial one), 0 while it is closed; shards this server has served.",
		[]string{"shard"}, nil)
)

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- inUseDesc
	ch <- idleDesc
	ch <- breakerDesc
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	c.r.mu.Lock()
	shards := make([]*shardPool, 0, len(c.r.shards))
	for _, s := range c.r.shards {
		shards = append(shards, s)
	}
	c.r.mu.Unlock()
	for _, s := range shards {
		st := s.shardStats()
		ch <- prometheus.MustNewConstMetric(inUseDesc, prometheus.GaugeValue, float64(st.InUse), s.name)
		ch <- prometheus.MustNewConstMetric(idleDesc, prometheus.GaugeValue, float64(st.Idle), s.name)
		breakerOpen := 0.0
		if st.BreakerOpen {
			breakerOpen = 1
		}
		ch <- prometheus.MustNewConstMetric(breakerDesc, prometheus.GaugeValue, breakerOpen, s.name)
	}
}

// ShardStats is this router's view of one shard: what /metrics reports as
// silo_pool_connections_in_use, silo_pool_connections_idle and
// silo_shard_breaker_open.
type ShardStats struct {
	InUse       int  // connections lent out, all tenants
	Idle        int  // connections open and idle, all tenants
	BreakerOpen bool // its tenants' requests refused at once, but a trial one
}

// ShardStats returns the router's connections to shard and the state of
// its breaker; ok is false when the router has not served a tenant of the
// shard since it started. It is safe for concurrent use.
func (r *Router) ShardStats(shard string) (st ShardStats, ok bool) {
	r.mu.Lock()
	s, ok := r.shards[shard]
	r.mu.Unlock()
	if !ok {
		return ShardStats{}, false
	}
	return s.shardStats(), true
}

func (s *shardPool) shardStats() ShardStats {
	open, idle := s.stats()
	return ShardStats{InUse: open - idle, Idle: idle, BreakerOpen: s.breaker.isOpen()}
}
