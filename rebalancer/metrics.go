package rebalancer

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	movePause prometheus.Histogram
	moveBytes prometheus.Counter
	catchUps  *catchUps
	lag       prometheus.GaugeFunc
}

func newMetrics() metrics {
	c := &catchUps{since: map[int]time.Time{}}
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
		catchUps: c,
		lag: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "silo_move_replication_lag_seconds",
			Help: "How long the longest wait of a move on this server for its target to apply the source's writes (its fence) has lasted: " +
				"how far behind its source the target is, at least; 0 while no move waits.",
		}, c.longest),
	}
}

func (m metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.movePause, m.moveBytes, m.lag} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// catchUps are the waits of this server's moves for their targets to catch
// up (awaitFence), for the lag gauge. It is safe for concurrent use.
type catchUps struct {
	mu    sync.Mutex
	next  int
	since map[int]time.Time
}

// start records a wait that begins now; end records its end.
func (c *catchUps) start() (end func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.next
	c.next++
	c.since[id] = time.Now()
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.since, id)
	}
}

// longest returns how long the oldest wait has lasted, in seconds; 0 when
// none is under way.
func (c *catchUps) longest() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var longest time.Duration
	for _, t := range c.since {
		longest = max(longest, time.Since(t))
	}
	return longest.Seconds()
}
