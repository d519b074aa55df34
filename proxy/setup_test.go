package proxy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/proxy"
	"github.com/silo-db/silo/rebalancer"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var key = []byte("0123456789abcdef0123456789abcdef")

var idSeq atomic.Int64

func newID(prefix string) string { return fmt.Sprintf("%s-%d", prefix, idSeq.Add(1)) }

// bundle is a catalog with both test shards, a provisioner, a router and
// the endpoint, listening on a loopback port.
type bundle struct {
	ctx    context.Context
	pool   *pgxpool.Pool
	store  *shardmap.Store
	prov   *provisioner.Provisioner
	router *router.Router
	srv    *proxy.Server
	addr   string // host:port of the endpoint
	fleet  *pgtest.Fleet
	reg    *prometheus.Registry
	reb    *rebalancer.Rebalancer // with options.moves
}

type options struct {
	router router.Config
	proxy  proxy.Config
	// moves registers a rebalancer with the engine, so the test can move
	// tenants live (pg_dump beside the server binaries copies the schema).
	moves bool
}

func setup(t *testing.T, o options) *bundle {
	t.Helper()
	fleet := pgtest.Start(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("SILO_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	pool, store := catalogtest.New(t, log)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	for i, name := range []string{"s1", "s2"} {
		_, err := store.CreateShard(ctx, silo.Shard{Name: name, DSN: fleet.Shards[i].DSN("postgres")})
		require.NoError(t, err)
	}
	eng := catalogtest.NewEngine(t, pool, store, log, engine.Config{})
	sealer, err := shardmap.NewSealer(key)
	require.NoError(t, err)
	dialer, err := shardmap.NewDialer(shardmap.DialerConfig{Store: store, Sealer: sealer, ConnectTimeout: 5 * time.Second, Logger: log})
	require.NoError(t, err)
	pc := provisioner.Config{
		Catalog: pool, Store: store, Engine: eng, Dialer: dialer, SecretKey: key, Logger: log,
		WarmPoolSize: -1, MaintenanceInterval: time.Hour,
	}
	if o.moves {
		binDir, err := pgcluster.FindBinDir()
		require.NoError(t, err)
		pc.PgDump = filepath.Join(binDir, "pg_dump")
		if _, err := os.Stat(pc.PgDump); err != nil {
			t.Skipf("no pg_dump beside the PostgreSQL server binaries in %s", binDir)
		}
	}
	prov, err := provisioner.New(pc)
	require.NoError(t, err)
	var reb *rebalancer.Rebalancer
	if o.moves {
		reb, err = rebalancer.New(rebalancer.Config{Catalog: pool, Store: store, Dialer: dialer, Engine: eng, Provisioner: prov, Logger: log})
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = eng.Stop(sctx)
		_ = prov.Stop(sctx)
	})
	require.NoError(t, eng.Start(ctx))
	reg := prometheus.NewRegistry()
	rc := o.router
	rc.Catalog, rc.Store, rc.SecretKey, rc.Logger, rc.Registry = pool, store, key, log, reg
	rt, err := router.New(rc)
	require.NoError(t, err)
	require.NoError(t, rt.Start(ctx))
	t.Cleanup(rt.Stop)
	xc := o.proxy
	xc.Router, xc.Logins, xc.MockSecret, xc.Logger, xc.Registry = rt, store, key, log, reg
	srv, err := proxy.New(xc)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	return &bundle{ctx: ctx, pool: pool, store: store, prov: prov, router: rt, srv: srv, addr: ln.Addr().String(), fleet: fleet, reg: reg, reb: reb}
}

// tenant creates a tenant on shard ("" any) and returns its id and a key.
func (b *bundle) tenant(t *testing.T, prefix, shard string) (string, string) {
	t.Helper()
	id := newID(prefix)
	_, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: id, Shard: shard}, time.Minute)
	require.NoError(t, err)
	_, token, err := b.store.CreateTenantKey(b.ctx, id, "")
	require.NoError(t, err)
	return id, token
}

// dsn is a libpq URL for the tenant through the endpoint.
func (b *bundle) dsn(user, password, database string, extra ...string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: b.addr, Path: "/" + database}
	q := url.Values{"sslmode": {"disable"}}
	for i := 0; i+1 < len(extra); i += 2 {
		q.Set(extra[i], extra[i+1])
	}
	// Spaces as %20: libpq and pgx read a '+' as itself (options=-c a=b).
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

// metricValue returns the value of a counter or gauge of reg, or a
// histogram's count, summed over the series whose labels include
// labels (name, value pairs); 0 if there is none.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			match := true
			for i := 0; i+1 < len(labels); i += 2 {
				match = match && have[labels[i]] == labels[i+1]
			}
			if !match {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}
