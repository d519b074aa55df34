package reconcile

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	findings *prometheus.GaugeVec
	lastRun  prometheus.Gauge
	repairs  *prometheus.CounterVec
}

func newMetrics() metrics {
	m := metrics{
		findings: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "silo_check_findings",
			Help: "Findings of the last fleet check this server ran, by kind.",
		}, []string{"kind"}),
		lastRun: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "silo_check_last_run_timestamp_seconds",
			Help: "When the last fleet check this server ran finished, in Unix seconds.",
		}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "silo_check_repairs_total",
			Help: "Findings a repair acted on, by kind and outcome (repaired, skipped, failed).",
		}, []string{"kind", "outcome"}),
	}
	// Every kind has a value, so a kind that was fixed reads 0, not stale.
	for _, k := range Kinds {
		m.findings.WithLabelValues(string(k))
	}
	return m
}

func (m metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.findings, m.lastRun, m.repairs} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// observe records a finished check.
func (m metrics) observe(rep *Report) {
	n := rep.Count()
	for _, k := range Kinds {
		m.findings.WithLabelValues(string(k)).Set(float64(n[k]))
	}
	m.lastRun.Set(float64(rep.Started.Add(rep.Duration).Unix()))
}
