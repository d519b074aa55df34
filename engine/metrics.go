package engine

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	operations     *prometheus.CounterVec
	steps          *prometheus.CounterVec
	forwardRetries *prometheus.CounterVec
	recovered      prometheus.Counter
	rescued        *prometheus.CounterVec
	running        *prometheus.GaugeVec
}

func newMetrics() metrics {
	return metrics{
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "silo_operations_total",
			Help: "Tenant operations finished, by kind and outcome.",
		}, []string{"kind", "outcome"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "silo_operation_steps_total",
			Help: "Operation steps run (undo steps included), by operation kind, step and outcome.",
		}, []string{"kind", "step", "outcome"}),
		forwardRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "silo_operation_forward_retries_total",
			Help: "Failed steps left to be retried forward (past the pivot, or in a plan without undo), by operation kind.",
		}, []string{"kind"}),
		recovered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "silo_operations_recovered_total",
			Help: "Running operations whose server was gone (lease free), queued to be resumed by the recovery sweep.",
		}),
		rescued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "silo_jobs_rescued_total",
			Help: "River jobs left running by a server that is gone (its lease free), made available again, by kind.",
		}, []string{"kind"}),
		running: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "silo_operations_running",
			Help: "Operations this server is running now (their steps or undo under way), by kind.",
		}, []string{"kind"}),
	}
}

func (m metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.operations, m.steps, m.forwardRetries, m.recovered, m.rescued, m.running} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
