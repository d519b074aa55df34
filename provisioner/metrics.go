package provisioner

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	provision *prometheus.HistogramVec
	warmPool  *prometheus.GaugeVec
	movePause prometheus.Histogram
	moveBytes prometheus.Counter
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
		movePause: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "silo_move_cutover_seconds",
			Help:    "The write pause of each tenant move: from requests held to the tenant switched to its new shard.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 12), // 10 ms to 20 s
		}),
		moveBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "silo_move_bytes_total",
			Help: "Bytes of tenant databases moved to other shards (their size on the target once moved).",
		}),
	}
}

func (m metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.provision, m.warmPool, m.movePause, m.moveBytes} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
