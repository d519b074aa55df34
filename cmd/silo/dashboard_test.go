package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/shardmap"
)

const (
	dashboardFile  = "../../deploy/grafana/silo.json"
	alertRulesFile = "../../deploy/prometheus/alerts.yml"
)

// Every metric the Grafana dashboard and the alert rules name is one that a
// real `silo serve` registers, the wire-protocol endpoint's included. The
// server's metric families are read from what each collector describes
// (metricsRegistry), since a labelled metric has no sample until it is first
// used; a scrape of /metrics shows the new gauges with their samples.
func TestDashboardMetricsExist(t *testing.T) {
	t.Parallel()
	addr, reg := startServer(t)

	served := map[string]bool{}
	for _, d := range reg.described() {
		m := descNameRE.FindStringSubmatch(d.String())
		require.NotNil(t, m, "a description without a name: %s", d)
		served[m[1]] = true
	}
	for _, name := range []string{"silo_tenants", "silo_shard_breaker_open", "silo_operations_running",
		"silo_move_replication_lag_seconds", "silo_http_requests_total", "silo_proxy_logins_total"} {
		require.True(t, served[name], "the server registers %s", name)
	}

	used := map[string][]string{} // metric → the files that use it
	for _, f := range []struct {
		file  string
		exprs []string
	}{
		{dashboardFile, dashboardExprs(t)},
		{alertRulesFile, alertExprs(t)},
	} {
		require.NotEmpty(t, f.exprs, f.file)
		for _, e := range f.exprs {
			for _, name := range metricNames(e) {
				used[name] = append(used[name], f.file)
			}
		}
	}
	var missing []string
	for name, files := range used {
		if !served[name] && !served[histogramFamily(name)] {
			missing = append(missing, name+" (in "+strings.Join(files, ", ")+")")
		}
	}
	sort.Strings(missing)
	require.Empty(t, missing, "metrics the dashboard or the alert rules use that Silo does not serve")
	for _, name := range []string{"silo_tenants", "silo_shard_breaker_open", "silo_operations_running", "silo_move_replication_lag_seconds"} {
		require.NotEmpty(t, used[name], "the dashboard or the rules show %s", name)
	}
	t.Logf("%d metrics used, all served (%d served)", len(used), len(served))

	// The gauges read at scrape time are on /metrics with samples before
	// any request: the catalog's tenant counts, a gauge per operation kind.
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	for _, line := range []string{
		`silo_tenants{shard="metrics-1",state="active"} 0`,
		`silo_operations_running{kind="create"} 0`,
		`silo_operations_running{kind="move"} 0`,
		`silo_move_replication_lag_seconds 0`,
	} {
		require.Contains(t, string(body), "\n"+line+"\n")
	}
}

// descNameRE reads the name of a metric from a description's String():
// client_golang has no accessor for it.
var descNameRE = regexp.MustCompile(`^Desc\{fqName: "([^"]+)"`)

// histogramFamily is the family a histogram's series belongs to:
// silo_x_bucket, silo_x_count and silo_x_sum are silo_x's.
func histogramFamily(name string) string {
	for _, suffix := range []string{"_bucket", "_count", "_sum"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			return base
		}
	}
	return name
}

// startServer runs `silo serve`'s server in-process, with the wire-protocol
// endpoint and one shard of the test fleet, until the test ends, and
// returns its HTTP address and its metrics registry.
func startServer(t *testing.T) (net.Addr, *metricsRegistry) {
	t.Helper()
	fleet := pgtest.Start(t)
	var o serveOptions
	cmd := &cobra.Command{Use: "serve"}
	addServeFlags(cmd, &o)
	require.NoError(t, cmd.ParseFlags([]string{"--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0",
		"--admin-token", "dashboard-test-token-0123456789", "--secret-key", strings.Repeat("cd", 32), "--warm-pool-size", "0"}))
	o.catalogDSN = pgtest.NewDatabase(t, fleet.Catalog)
	setup := func(ctx context.Context, store *shardmap.Store) error {
		_, err := store.CreateShard(silo.WithActor(ctx, silo.Actor{Name: "test"}),
			silo.Shard{Name: "metrics-1", DSN: fleet.Shards[0].DSN("postgres")})
		return err
	}
	type serving struct {
		addr net.Addr
		reg  *metricsRegistry
	}
	up := make(chan serving, 1)
	errc := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	go func() {
		errc <- runServer(ctx, o, log, setup, func(addr net.Addr, _ *pgEndpoint, reg *metricsRegistry) { up <- serving{addr, reg} })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			require.NoError(t, err)
		case <-time.After(60 * time.Second):
			t.Error("the server did not stop within 60s")
		}
	})
	select {
	case s := <-up:
		return s.addr, s.reg
	case err := <-errc:
		t.Fatalf("the server stopped before it served: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("the server did not serve within 90s")
	}
	return nil, nil
}

// dashboardExprs returns the PromQL of the dashboard: its panels' targets
// and its template variables' queries.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	var doc any
	require.NoError(t, json.Unmarshal(b, &doc))
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, child := range v {
				if s, ok := child.(string); ok && (k == "expr" || k == "query" || k == "definition") {
					exprs = append(exprs, s)
				}
				walk(child)
			}
		case []any:
			for _, child := range v {
				walk(child)
			}
		}
	}
	walk(doc)
	return exprs
}

// alertExprs returns the expressions of the alert rules.
func alertExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(alertRulesFile)
	require.NoError(t, err)
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	require.NoError(t, yaml.Unmarshal(b, &doc))
	var exprs []string
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			require.NotEmpty(t, r.Expr, "alert %s", r.Alert)
			exprs = append(exprs, r.Expr)
		}
	}
	return exprs
}

// metricNames returns the identifiers of a PromQL expression that start
// with silo_, outside string literals, in order.
func metricNames(expr string) []string {
	var names []string
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			i++
			for i < len(expr) && expr[i] != c {
				if expr[i] == '\\' && c != '`' {
					i++
				}
				i++
			}
			i++
		case isIdentStart(c):
			j := i + 1
			for j < len(expr) && (isIdentStart(expr[j]) || expr[j] >= '0' && expr[j] <= '9') {
				j++
			}
			if name := expr[i:j]; strings.HasPrefix(name, "silo_") {
				names = append(names, name)
			}
			i = j
		default:
			i++
		}
	}
	return names
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func TestMetricNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`histogram_quantile(0.99, sum by (le, shard) (rate(silo_pool_wait_seconds_bucket[5m]))) > 1`, []string{"silo_pool_wait_seconds_bucket"}},
		{`max(silo_catalog_up) == 0`, []string{"silo_catalog_up"}},
		{`label_values(silo_tenants, shard)`, []string{"silo_tenants"}},
		{`sum(rate(silo_a_total{kind="silo_not_a_metric", b='silo_nor'}[5m])) and on () max(silo_b) > 0`, []string{"silo_a_total", "silo_b"}},
		{`sum by (status) (rate(silo_http_requests_total{route=~"/v1/.*\"silo_x"}[$__rate_interval]))`, []string{"silo_http_requests_total"}},
		{`up{job="silo"} unless xsilo_y`, nil},
	} {
		require.Equal(t, tc.want, metricNames(tc.expr), tc.expr)
	}
	require.Equal(t, "silo_x", histogramFamily("silo_x_bucket"))
	require.Equal(t, "silo_x", histogramFamily("silo_x_count"))
	require.Equal(t, "silo_x_total", histogramFamily("silo_x_total"))
}
