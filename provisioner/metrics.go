package provisioner

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	provision *prometheus.HistogramVec
	warmPool  *prometheus.GaugeVec
}

func newMetrics() metrics {
	return metrics{
		provision: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "silo_provision_duration_seconds",
			Help:    "Time from a create request to the tenant being active, by source of its database (warm pool or template) and outcome.",
			Buckets: prometheus.ExponentialBuckets(0.002, 2, 14), // 2 ms to 16 s
		}, []string{"source", "outcome"}),
		warmPool: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "silo_warm_pool_databases",
			Help: "Ready databases in each shard's warm pool, as last seen by this server.",
		}, []string{"shard"}),
	}
}

func (m metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.provision, m.warmPool} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
