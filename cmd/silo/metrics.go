package main

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metricsRegistry is the server's registry, served at /metrics. It also
// keeps what each collector registered describes: a labelled metric has no
// sample, and so is not gathered, until it is first used, but every metric
// the server can report is described at registration. The test of the
// dashboard and the alert rules checks their metrics against these.
type metricsRegistry struct {
	*prometheus.Registry

	mu    sync.Mutex
	descs []*prometheus.Desc
}

func newMetricsRegistry() *metricsRegistry {
	return &metricsRegistry{Registry: prometheus.NewRegistry()}
}

// Register registers c, and keeps its descriptions once it is registered.
func (r *metricsRegistry) Register(c prometheus.Collector) error {
	if err := r.Registry.Register(c); err != nil {
		return err
	}
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	r.mu.Lock()
	defer r.mu.Unlock()
	for d := range ch {
		r.descs = append(r.descs, d)
	}
	return nil
}

// MustRegister registers each collector as Register does, and panics on
// the first that fails.
func (r *metricsRegistry) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// described returns the descriptions of every metric registered so far.
func (r *metricsRegistry) described() []*prometheus.Desc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*prometheus.Desc(nil), r.descs...)
}
