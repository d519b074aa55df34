package rebalancer

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	movePause prometheus.Histogram
	moveBytes prometheus.Counter
}

func newMetrics() metrics {
	return metrics{
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
	for _, c := range []prometheus.Collector{m.movePause, m.moveBytes} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
