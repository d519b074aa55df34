package proxy

import "github.com/prometheus/client_golang/prometheus"

// metrics of the endpoint. No label holds a tenant id: there are too many.
type metrics struct {
	clients        prometheus.Gauge
	logins         *prometheus.CounterVec
	loginTime      prometheus.Histogram
	transactions   prometheus.Counter
	queries        prometheus.Counter
	waitTime       prometheus.Histogram
	reprepares     prometheus.Counter
	resends        prometheus.Counter
	cancels        *prometheus.CounterVec
	protocolErrors prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "silo_proxy_client_connections", Help: "Client connections of the wire-protocol endpoint in session, authenticated.",
		}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "silo_proxy_logins_total", Help: "Client logins, by result: ok, refused (a wrong key, an unknown tenant, too many clients), suspended, unavailable.",
		}, []string{"result"}),
		loginTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "silo_proxy_login_seconds", Help: "Time from a client's first byte to its first ReadyForQuery.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		transactions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "silo_proxy_transactions_total", Help: "Transactions relayed under transaction pooling (each a server connection lent and returned).",
		}),
		queries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "silo_proxy_queries_total", Help: "Simple queries and extended-protocol Executes relayed.",
		}),
		waitTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "silo_proxy_server_wait_seconds", Help: "Time a client waited for a server connection (the shard's budget, the tenant's cap, a move's cutover).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 18),
		}),
		reprepares: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "silo_proxy_reprepares_total", Help: "Client prepared statements prepared again on a server connection that lacked them.",
		}),
		resends: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "silo_proxy_resends_total", Help: "Batches sent again on another server connection: the first ended (a move's cutover, a restart) before it answered any of it.",
		}),
		cancels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "silo_proxy_cancel_requests_total", Help: "Cancel requests, by result: ok (passed to the shard) or refused (no such client, wrong key).",
		}, []string{"result"}),
		protocolErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "silo_proxy_protocol_errors_total", Help: "Client connections ended for a protocol violation, an oversized message or garbage.",
		}),
	}
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.clients, m.logins, m.loginTime, m.transactions, m.queries, m.waitTime,
		m.reprepares, m.resends, m.cancels, m.protocolErrors} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
