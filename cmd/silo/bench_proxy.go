package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/proxy"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

// The targets pgbench runs against, in the order of the table.
const (
	targetDirect    = "direct"
	targetPgBouncer = "pgbouncer"
	targetSilo      = "silo"
)

var (
	proxyBenchTargets   = []string{targetDirect, targetPgBouncer, targetSilo}
	proxyBenchProtocols = []string{"simple", "extended", "prepared"}
)

// proxyBenchRow is one configuration's figures over the rounds: medians,
// and the spread of the ratios.
type proxyBenchRow struct {
	Tenants  int    `json:"tenants"`
	Clients  int    `json:"clients"`
	Protocol string `json:"protocol"`
	Target   string `json:"target"`
	Rounds   int    `json:"rounds"`
	// TPS and P99ms are the medians of the rounds' throughput and p99
	// latency.
	TPS   float64 `json:"tps"`
	P99ms float64 `json:"p99Ms"`
	// CPUus is the median of the proxy's CPU time per transaction, in
	// µs: PgBouncer's process, or the endpoint's.
	CPUus float64 `json:"proxyCpuUsPerTransaction,omitempty"`
	// Ratio is the median of each round's throughput over the direct
	// run's of the same round; RatioMin and RatioMax its spread.
	Ratio    float64 `json:"ratioToDirect"`
	RatioMin float64 `json:"ratioToDirectMin"`
	RatioMax float64 `json:"ratioToDirectMax"`
	// VsPgBouncer is the same for Silo's throughput over PgBouncer's
	// (Silo's rows, where PgBouncer ran).
	VsPgBouncer    float64 `json:"ratioToPgBouncer,omitempty"`
	VsPgBouncerMin float64 `json:"ratioToPgBouncerMin,omitempty"`
	VsPgBouncerMax float64 `json:"ratioToPgBouncerMax,omitempty"`
	// Failed says why the configuration has no figures: the first error
	// of its first run; it is not tried again.
	Failed string `json:"failed,omitempty"`
	// Skipped says why the configuration is not run.
	Skipped string `json:"skipped,omitempty"`
}

// proxyManyResult is the many-clients part: client connections held over
// many tenants, within the shard budget.
type proxyManyResult struct {
	Clients  int           `json:"clients"`
	Tenants  int           `json:"tenants"`
	Budget   int           `json:"shardBudget"`
	Interval time.Duration `json:"-"`
	// IntervalSeconds is how often each client runs a query.
	IntervalSeconds float64 `json:"intervalSeconds"`
	Seconds         float64 `json:"seconds"`
	Queries         int64   `json:"queries"`
	// PerSecond counts successful queries.
	PerSecond float64 `json:"queriesPerSecond"`
	P50ms     float64 `json:"p50Ms"`
	P99ms     float64 `json:"p99Ms"`
	Maxms     float64 `json:"maxMs"`
	// PeakConns is, per shard, the most sessions of the bench's tenants
	// seen at once in pg_stat_activity, sampled every 50 ms.
	PeakConns     []int  `json:"peakServerConnectionsPerShard"`
	Samples       int64  `json:"samples"`
	ConnectErrors int64  `json:"connectErrors"`
	Errors        int64  `json:"errors"`
	FirstError    string `json:"firstError,omitempty"`
}

type proxyBenchResult struct {
	Rounds         int              `json:"rounds"`
	SecondsPerRun  int              `json:"secondsPerRun"`
	Clients        int              `json:"clients"`
	ShardBudget    int              `json:"shardBudget"`
	TenantMaxConns int              `json:"tenantMaxConns"`
	Rows           []proxyBenchRow  `json:"rows,omitempty"`
	Many           *proxyManyResult `json:"many,omitempty"`
}

// proxyBenchOptions are the flags of `silo bench proxy`.
type proxyBenchOptions struct {
	devDir, catalogDSN, secretKey string
	pgbenchBin, pgbouncerBin      string
	parts, protocols, targetNames []string
	rounds, clients               int
	duration                      time.Duration
	budget, tenantMax             int
	manyClients, manyTenants      int
	manyDuration, manyInterval    time.Duration
	cpuProfile                    string
}

func newBenchProxyCmd(g *globals) *cobra.Command {
	var o proxyBenchOptions
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Compare pgbench through Silo's wire-protocol endpoint with PgBouncer and the shard itself",
		Long: "Part compare: run `pgbench -S` (-M simple, extended, prepared) against (a) the shard\n" +
			"directly, as the tenant's own role on its database, (b) PgBouncer in transaction mode,\n" +
			"(c) Silo's wire-protocol endpoint, all with sslmode=disable; on 1 tenant with C clients\n" +
			"(one pgbench, -j 2) and on C tenants at once (C pgbench processes, one client each).\n" +
			"The targets interleave in rounds, the direct run repeated in every round; the table\n" +
			"gives, per configuration, the median throughput and p99 latency (from pgbench --log)\n" +
			"over the rounds and the median ratio to the round's direct run with its min-max.\n" +
			"PgBouncer's -M prepared is skipped: it keeps no prepared statements in transaction\n" +
			"mode. A target that fails is reported with its error and not tried again.\n" +
			"Part many: hold --many-clients connections over --many-tenants tenants through the\n" +
			"endpoint, each running a query every --many-interval, and sample the shards'\n" +
			"pg_stat_activity for the router's connections against --shard-budget.\n\n" +
			"The endpoint runs in this process, with a router of its own: the code `silo serve\n" +
			"--pg-listen` runs (--cpuprofile profiles it during the compare part; pgbench,\n" +
			"PgBouncer and PostgreSQL are processes of their own). Tenants bench-proxy-0 .. N-1 are\n" +
			"made (or reused) through the API, the first C with pgbench's tables (scale 1) and a\n" +
			"connection limit of 64. --dir reads the catalog and secret key from a silo dev directory.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.benchProxy(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.parts, "parts", []string{"compare", "many"}, "the parts to run: compare (pgbench), many (many clients within the budget)")
	f.StringSliceVar(&o.protocols, "protocols", proxyBenchProtocols, "pgbench's -M modes to run: simple, extended, prepared")
	f.StringSliceVar(&o.targetNames, "targets", proxyBenchTargets, "the targets besides direct (always run, the baseline): pgbouncer, silo")
	f.IntVar(&o.rounds, "rounds", 5, "rounds of the compare part: each runs every configuration once")
	f.DurationVar(&o.duration, "duration", 5*time.Second, "how long each pgbench run lasts (whole seconds)")
	f.IntVarP(&o.clients, "clients", "c", 16, "pgbench clients on one tenant, and tenants (one client each) in the multi-tenant runs")
	f.IntVar(&o.budget, "shard-budget", router.DefaultShardBudget, "the endpoint's connection budget per shard")
	f.IntVar(&o.tenantMax, "tenant-max-conns", router.DefaultTenantMaxConns, "the endpoint's connections per tenant, and PgBouncer's pool per database")
	f.IntVar(&o.manyClients, "many-clients", 1000, "client connections of the many part")
	f.IntVar(&o.manyTenants, "many-tenants", 200, "tenants the many part's clients spread over")
	f.DurationVar(&o.manyDuration, "many-duration", 20*time.Second, "how long the many part's clients run queries, once all are connected")
	f.DurationVar(&o.manyInterval, "many-interval", 10*time.Second, "how often each client of the many part runs a query")
	f.StringVar(&o.pgbenchBin, "pgbench", "", "the pgbench binary (default: from PATH or beside the PostgreSQL server binaries)")
	f.StringVar(&o.pgbouncerBin, "pgbouncer", "", "the pgbouncer binary (default: from PATH or /usr/sbin)")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (the endpoint) during the compare part to this file")
	f.StringVar(&o.devDir, "dir", "", "a silo dev directory: read the catalog and secret key from it")
	f.StringVar(&o.catalogDSN, "catalog-dsn", "", "the catalog (without --dir)")
	f.StringVar(&o.secretKey, "secret-key", "", "the secret key (without --dir)")
	return cmd
}

func (o *proxyBenchOptions) validate() error {
	for _, p := range o.parts {
		if p != "compare" && p != "many" {
			return fmt.Errorf("--parts: %q is not compare or many", p)
		}
	}
	for _, p := range o.protocols {
		if !slices.Contains(proxyBenchProtocols, p) {
			return fmt.Errorf("--protocols: %q is not simple, extended or prepared", p)
		}
	}
	for _, t := range o.targetNames {
		if !slices.Contains(proxyBenchTargets, t) {
			return fmt.Errorf("--targets: %q is not direct, pgbouncer or silo", t)
		}
	}
	// In the table's order, direct first.
	o.protocols = slices.DeleteFunc(slices.Clone(proxyBenchProtocols), func(p string) bool { return !slices.Contains(o.protocols, p) })
	o.targetNames = slices.DeleteFunc(slices.Clone(proxyBenchTargets), func(t string) bool {
		return t != targetDirect && !slices.Contains(o.targetNames, t)
	})
	switch {
	case o.rounds < 1 || o.rounds > 100:
		return errors.New("--rounds must be 1 to 100")
	case o.duration < time.Second || o.duration > 10*time.Minute:
		return errors.New("--duration must be 1s to 10m")
	case o.clients < 1 || o.clients > 64:
		return errors.New("-c must be 1 to 64")
	case o.budget < 1 || o.tenantMax < 1:
		return errors.New("--shard-budget and --tenant-max-conns must be at least 1")
	case o.manyClients < 1 || o.manyClients > 10000 || o.manyTenants < 1 || o.manyTenants > o.manyClients:
		return errors.New("--many-clients must be 1 to 10000, and --many-tenants 1 to --many-clients")
	case o.manyDuration < time.Second || o.manyDuration > time.Hour || o.manyInterval <= 0 || o.manyInterval > time.Minute:
		return errors.New("--many-duration must be 1s to 1h and --many-interval up to 1m")
	}
	if o.devDir != "" {
		var err error
		if o.catalogDSN, o.secretKey, err = readDevDir(o.devDir); err != nil {
			return err
		}
	}
	if o.catalogDSN == "" || o.secretKey == "" {
		return errors.New("--dir, or --catalog-dsn and --secret-key, are required")
	}
	return nil
}

// proxyBench is one run of the bench: its tenants, how to reach them
// through each target, and the endpoint under test.
type proxyBench struct {
	g       *globals
	o       proxyBenchOptions
	pgbench string
	targets []benchTarget // by tenant, bench-proxy-0 first
	tokens  []string      // each tenant's key for the endpoint
	keyIDs  []string
	shards  []string // the shards' admin DSNs
	store   *shardmap.Store
	silo    *net.TCPAddr // the endpoint
	bouncer *pgBouncer
	tmp     string // pgbench's logs
}

func (g *globals) benchProxy(ctx context.Context, o proxyBenchOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	b := &proxyBench{g: g, o: o}
	compare, many := slices.Contains(o.parts, "compare"), slices.Contains(o.parts, "many")
	if compare {
		if b.pgbench = findPgbench(o.pgbenchBin); b.pgbench == "" {
			return errors.New("pgbench not found: install PostgreSQL's client tools, or pass --pgbench")
		}
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	pool, store, key, err := openBenchCatalog(ctx, o.catalogDSN, o.secretKey, 8)
	if err != nil {
		return err
	}
	defer pool.Close()
	b.store = store
	n := 0
	if compare {
		n = o.clients
	}
	if many {
		n = max(n, o.manyTenants)
	}
	ids, err := b.prepareTenants(ctx, c, key, n)
	if err != nil {
		return err
	}

	// The endpoint, as `silo serve --pg-listen` runs it, on a router of
	// its own.
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	rt, err := router.New(router.Config{Catalog: pool, Store: store, SecretKey: key, Logger: log,
		ShardBudget: o.budget, TenantMaxConns: o.tenantMax})
	if err != nil {
		return err
	}
	if err := rt.Start(ctx); err != nil {
		return err
	}
	defer rt.Stop()
	ectx, stopEndpoint := context.WithCancel(ctx)
	so := serveOptions{pgListen: "127.0.0.1:0", shutdownTimeout: 5 * time.Second, pgMaxClients: proxy.DefaultMaxClients, pgServerWait: proxy.DefaultServerWaitTimeout,
		maxMessageBytes: router.DefaultMaxMessageBytes, keyCacheTTL: api.DefaultKeyCacheTTL}
	ep, err := startPgEndpoint(ectx, so, key, rt, store, log, nil)
	if err != nil {
		stopEndpoint()
		return err
	}
	defer func() { stopEndpoint(); ep.wait() }()
	if b.silo, err = net.ResolveTCPAddr("tcp", ep.addr); err != nil {
		return err
	}
	if err := b.makeKeys(ctx, ids); err != nil {
		return err
	}
	defer b.revokeKeys(context.WithoutCancel(ctx))

	res := proxyBenchResult{Rounds: o.rounds, SecondsPerRun: int(o.duration / time.Second), Clients: o.clients,
		ShardBudget: o.budget, TenantMaxConns: o.tenantMax}
	if compare {
		if res.Rows, err = b.compare(ctx); err != nil {
			return err
		}
	}
	if many {
		m, err := b.many(ctx)
		if err != nil {
			return err
		}
		res.Many = &m
	}
	if g.output == "json" {
		return g.printJSON(res)
	}
	return g.printProxyBench(res)
}

// prepareTenants makes sure tenants bench-proxy-0 .. n-1 exist, the first
// o.clients with pgbench's tables and room for every target's
// connections, and looks up how to reach each on its shard.
func (b *proxyBench) prepareTenants(ctx context.Context, c *api.ClientWithResponses, key []byte, n int) ([]string, error) {
	if err := b.g.ensureTenants(ctx, c, "bench-proxy", n); err != nil {
		return nil, err
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "bench-proxy-" + strconv.Itoa(i)
	}
	targets, shards, err := benchTargets(ctx, b.store, key, ids)
	if err != nil {
		return nil, err
	}
	b.targets, b.shards = targets, shards
	if !slices.Contains(b.o.parts, "compare") {
		return ids, nil
	}
	// pgbench's clients, PgBouncer's pool and the endpoint's connections
	// may all be open at once: more than the default limit of 20.
	limits := api.TenantLimits{Connections: 64, TempFileMB: silo.DefaultTenantTempFileMB}
	for _, id := range ids[:b.o.clients] {
		resp, err := c.UpdateTenantWithResponse(ctx, id, api.TenantUpdate{Limits: limits})
		if err := b.g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
			return nil, fmt.Errorf("set the connection limit of %s: %w", id, err)
		}
	}
	for _, t := range targets[:b.o.clients] {
		if err := b.initPgbench(ctx, t); err != nil {
			return nil, fmt.Errorf("pgbench tables of %s: %w", t.ID, err)
		}
	}
	return ids, nil
}

// initPgbench makes pgbench's tables at scale 1 in the tenant's database,
// as its own role, unless they are there.
func (b *proxyBench) initPgbench(ctx context.Context, t benchTarget) error {
	conn, err := pgx.Connect(ctx, directDSN(t))
	if err != nil {
		return err
	}
	var branches, accounts int64
	err = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pgbench_branches), (SELECT count(*) FROM pgbench_accounts)`).Scan(&branches, &accounts)
	conn.Close(context.WithoutCancel(ctx))
	if err == nil && branches == 1 && accounts == 100000 {
		return nil
	}
	ictx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	// Generated on the server (G), then vacuumed and keyed, as pgbench -i.
	cmd := exec.CommandContext(ictx, b.pgbench, "-i", "-q", "-s", "1", "-I", "dtGvp",
		"-h", t.Host, "-p", strconv.Itoa(int(t.Port)), "-U", t.Database, t.Database)
	cmd.Env = pgEnv(t.Password)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func directDSN(t benchTarget) string {
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", t.Database, t.Password, t.Host, t.Port, t.Database)
}

// makeKeys makes a key per tenant for the endpoint.
func (b *proxyBench) makeKeys(ctx context.Context, ids []string) error {
	b.tokens, b.keyIDs = make([]string, len(ids)), make([]string, len(ids))
	for i, id := range ids {
		k, token, err := b.store.CreateTenantKey(ctx, id, "bench-proxy")
		if err != nil {
			return fmt.Errorf("key for %s: %w", id, err)
		}
		b.tokens[i], b.keyIDs[i] = token, k.ID
	}
	return nil
}

func (b *proxyBench) revokeKeys(ctx context.Context) {
	for i, id := range b.keyIDs {
		if id != "" {
			_ = b.store.RevokeTenantKey(ctx, b.targets[i].ID, id)
		}
	}
}

// pgbenchTarget is where one pgbench process connects.
type pgbenchTarget struct {
	host           string
	port           int
	user, db, pass string
}

// pgbenchTarget returns how pgbench reaches tenant i through target.
func (b *proxyBench) pgbenchTarget(target string, i int) pgbenchTarget {
	t := b.targets[i]
	switch target {
	case targetPgBouncer:
		return pgbenchTarget{host: "127.0.0.1", port: b.bouncer.port, user: t.Database, db: t.Database}
	case targetSilo:
		return pgbenchTarget{host: b.silo.IP.String(), port: b.silo.Port, user: t.ID, db: t.ID, pass: b.tokens[i]}
	default:
		return pgbenchTarget{host: t.Host, port: int(t.Port), user: t.Database, db: t.Database, pass: t.Password}
	}
}

// shot is one pgbench run of one configuration.
type shot struct {
	tps float64
	p99 time.Duration
	cpu time.Duration // the proxy's CPU time per transaction
}

// compare runs the rounds of the compare part.
func (b *proxyBench) compare(ctx context.Context) ([]proxyBenchRow, error) {
	o := b.o
	var err error
	if slices.Contains(o.targetNames, targetPgBouncer) {
		bin := findPgBouncer(o.pgbouncerBin)
		if bin == "" {
			return nil, errors.New("pgbouncer not found (apt-get install pgbouncer, or --pgbouncer PATH)")
		}
		if b.bouncer, err = startPgBouncer(ctx, bin, b.targets[:o.clients], o.tenantMax); err != nil {
			return nil, err
		}
		// PgBouncer's server connections go before the many part counts
		// the shards' sessions.
		defer b.bouncer.Stop()
	}
	if b.tmp, err = os.MkdirTemp("", "silo-bench-proxy-"); err != nil {
		return nil, err
	}
	defer os.RemoveAll(b.tmp)
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	tenantCounts := []int{1, o.clients}
	if o.clients == 1 {
		tenantCounts = tenantCounts[:1]
	}
	type key struct {
		tenants       int
		proto, target string
	}
	shots := map[key][]shot{}
	failed := map[key]string{}
	skipped := map[key]string{}
	for _, tenants := range tenantCounts {
		// Its pgbench runs pass or fail by which server connection each
		// client's Parse of P_0 meets, so no figure of it means anything.
		skipped[key{tenants, "prepared", targetPgBouncer}] = "PgBouncer 1.18 keeps no prepared statements in transaction pooling"
	}
	for r := range o.rounds {
		if isTerminal(b.g.stderr) {
			fmt.Fprintf(b.g.stderr, "round %d of %d\n", r+1, o.rounds)
		}
		for _, tenants := range tenantCounts {
			for _, proto := range o.protocols {
				// The targets' order turns each round, so that none always
				// runs first, or right after another's load.
				for i := range o.targetNames {
					target := o.targetNames[(i+r)%len(o.targetNames)]
					k := key{tenants, proto, target}
					if _, ok := skipped[k]; ok {
						continue
					}
					if _, ok := failed[k]; ok {
						continue
					}
					s, err := b.run(ctx, target, proto, tenants)
					if ctx.Err() != nil {
						return nil, ctx.Err()
					}
					if err != nil {
						if target == targetDirect {
							return nil, fmt.Errorf("direct, %d tenants, -M %s: %w", tenants, proto, err)
						}
						failed[k] = err.Error()
						continue
					}
					shots[k] = append(shots[k], s)
				}
			}
		}
	}
	var rows []proxyBenchRow
	for _, tenants := range tenantCounts {
		for _, proto := range o.protocols {
			direct := shots[key{tenants, proto, targetDirect}]
			bouncer := shots[key{tenants, proto, targetPgBouncer}]
			for _, target := range o.targetNames {
				k := key{tenants, proto, target}
				row := proxyBenchRow{Tenants: tenants, Clients: o.clients, Protocol: proto, Target: target, Failed: failed[k],
					Skipped: skipped[k]}
				ss := shots[k]
				row.Rounds = len(ss)
				if len(ss) == 0 {
					rows = append(rows, row)
					continue
				}
				var tps, p99, cpu []float64
				for _, s := range ss {
					tps = append(tps, s.tps)
					p99 = append(p99, float64(s.p99.Microseconds())/1000)
					cpu = append(cpu, float64(s.cpu.Nanoseconds())/1000)
				}
				row.TPS, row.P99ms = median(tps), median(p99)
				if target != targetDirect {
					row.CPUus = median(cpu)
				}
				row.Ratio, row.RatioMin, row.RatioMax = ratios(ss, direct)
				if target == targetSilo && len(bouncer) == len(ss) {
					row.VsPgBouncer, row.VsPgBouncerMin, row.VsPgBouncerMax = ratios(ss, bouncer)
				}
				rows = append(rows, row)
			}
		}
	}
	return rows, nil
}

// ratios returns the median, min and max of a[i].tps / b[i].tps: the
// rounds' ratios. A configuration that failed in a round is left out of
// every round, so the two line up.
func ratios(a, b []shot) (med, lo, hi float64) {
	if len(a) != len(b) || len(a) == 0 {
		return 0, 0, 0
	}
	rs := make([]float64, len(a))
	for i := range a {
		if b[i].tps > 0 {
			rs[i] = a[i].tps / b[i].tps
		}
	}
	return median(rs), slices.Min(rs), slices.Max(rs)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// run runs one configuration: pgbench -S with o.clients clients on one
// tenant (-j 2), or one pgbench of one client on each of o.clients
// tenants, all at once. Its throughput is the sum of the processes'; its
// p99 is over every transaction they logged.
func (b *proxyBench) run(ctx context.Context, target, proto string, tenants int) (shot, error) {
	dir, err := os.MkdirTemp(b.tmp, "run-")
	if err != nil {
		return shot{}, err
	}
	defer os.RemoveAll(dir)
	secs := int(b.o.duration / time.Second)
	clients, threads := b.o.clients, min(2, b.o.clients)
	if tenants > 1 {
		clients, threads = 1, 1
	}
	// The proxy's CPU time: PgBouncer's process, or this one's (the
	// endpoint's; nothing else of the bench runs meanwhile).
	pid := -1
	switch target {
	case targetPgBouncer:
		pid = b.bouncer.cmd.Process.Pid
	case targetSilo:
		pid = 0
	}
	cpu0, _ := cpuTime(pid)
	tps := make([]float64, tenants)
	errs := make([]error, tenants)
	var wg sync.WaitGroup
	for i := range tenants {
		wg.Go(func() {
			tps[i], errs[i] = runPgbench(ctx, b.pgbench, b.pgbenchTarget(target, i), proto, clients, threads, secs,
				filepath.Join(dir, "log"+strconv.Itoa(i)))
		})
	}
	wg.Wait()
	cpu1, _ := cpuTime(pid)
	for _, err := range errs {
		if err != nil {
			return shot{}, err
		}
	}
	lat, err := pgbenchLatencies(dir)
	if err != nil {
		return shot{}, err
	}
	s := shot{}
	if len(lat) > 0 {
		s.cpu = (cpu1 - cpu0) / time.Duration(len(lat))
	}
	for _, t := range tps {
		s.tps += t
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		s.p99 = time.Duration(lat[min(len(lat)-1, len(lat)*99/100)]) * time.Microsecond
	}
	return s, nil
}

// cpuTime returns the CPU time process pid has used (0: this process;
// -1: none, 0).
func cpuTime(pid int) (time.Duration, error) {
	switch pid {
	case -1:
		return 0, nil
	case 0:
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0, err
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// After the command's name in parentheses: state, then utime and
	// stime at fields 14 and 15 of the line, in clock ticks (100 a second).
	i := bytes.LastIndexByte(stat, ')')
	f := strings.Fields(string(stat[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// runPgbench runs pgbench -S for secs seconds and returns its throughput
// (without the initial connections), or its first error.
func runPgbench(ctx context.Context, bin string, t pgbenchTarget, proto string, clients, threads, secs int, logPrefix string) (float64, error) {
	rctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(rctx, bin, "-n", "-S", "-M", proto, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(threads),
		"-T", strconv.Itoa(secs), "--log", "--log-prefix", logPrefix,
		"-h", t.host, "-p", strconv.Itoa(t.port), "-U", t.user, t.db)
	cmd.Env = pgEnv(t.pass)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return 0, fmt.Errorf("pgbench: %v: %s", err, pgbenchError(stderr.String()))
	}
	for line := range strings.Lines(stdout.String()) {
		// tps = 5012.345678 (without initial connection time)
		if rest, ok := strings.CutPrefix(line, "tps = "); ok && strings.Contains(rest, "without initial connection time") {
			f, _, _ := strings.Cut(rest, " ")
			return strconv.ParseFloat(f, 64)
		}
	}
	return 0, fmt.Errorf("pgbench printed no tps: %s", strings.TrimSpace(stdout.String()))
}

// pgbenchError picks the first error line of pgbench's standard error.
func pgbenchError(stderr string) string {
	for line := range strings.Lines(stderr) {
		if strings.Contains(line, "error") || strings.Contains(line, "ERROR") || strings.Contains(line, "FATAL") {
			return strings.TrimSpace(line)
		}
	}
	return strings.TrimSpace(stderr)
}

// pgbenchLatencies reads the latency, in µs, of every transaction in the
// per-transaction logs under dir: "client_id transaction_no time
// script_no time_epoch time_us".
func pgbenchLatencies(dir string) ([]int64, error) {
	files, err := filepath.Glob(filepath.Join(dir, "log*"))
	if err != nil {
		return nil, err
	}
	var lat []int64
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			if us, err := strconv.ParseInt(fields[2], 10, 64); err == nil {
				lat = append(lat, us)
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return lat, nil
}

// pgEnv is the environment of a libpq client: a password (if any), and no
// TLS, so that no target pays for it.
func pgEnv(password string) []string {
	env := append(os.Environ(), "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10")
	if password != "" {
		env = append(env, "PGPASSWORD="+password)
	}
	return env
}

// findPgbench returns the pgbench binary: path if set, else from PATH or
// beside the PostgreSQL server binaries, or "".
func findPgbench(path string) string {
	if path != "" {
		return path
	}
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p
	}
	if dir, err := pgcluster.FindBinDir(); err == nil {
		if p := filepath.Join(dir, "pgbench"); isExecutableFile(p) {
			return p
		}
	}
	return ""
}

func isExecutableFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// many holds o.manyClients connections to the endpoint over the first
// o.manyTenants tenants, each running a query every o.manyInterval for
// o.manyDuration, and samples the shards' sessions of those tenants.
func (b *proxyBench) many(ctx context.Context) (proxyManyResult, error) {
	o := b.o
	res := proxyManyResult{Clients: o.manyClients, Tenants: o.manyTenants, Budget: o.budget, Interval: o.manyInterval,
		IntervalSeconds: o.manyInterval.Seconds()}
	var errs atomic.Int64
	var firstErr atomic.Pointer[string]
	fail := func(err error) {
		errs.Add(1)
		msg := err.Error()
		firstErr.CompareAndSwap(nil, &msg)
	}
	dbs := make([]string, o.manyTenants)
	for i := range dbs {
		dbs[i] = b.targets[i].Database
	}
	stopSampling := sampleSessions(ctx, b.shards, dbs)
	sampled := false
	defer func() {
		if !sampled {
			stopSampling()
		}
	}()

	// Connect every client, a few at a time: each login is a SCRAM
	// exchange and a server connection lent to read the session's
	// parameters.
	conns := make([]*pgx.Conn, o.manyClients)
	var next atomic.Int64
	var wg sync.WaitGroup
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(conns) && cctx.Err() == nil; i = int(next.Add(1) - 1) {
				t := b.pgbenchTarget(targetSilo, i%o.manyTenants)
				cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", t.user, t.host, t.port, t.db))
				if err != nil {
					fail(err)
					continue
				}
				cfg.Password = t.pass
				cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
				if conns[i], err = pgx.ConnectConfig(cctx, cfg); err != nil {
					fail(fmt.Errorf("connect client %d: %w", i, err))
				}
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	res.ConnectErrors = errs.Load()
	if cctx.Err() != nil {
		return res, fmt.Errorf("the many part's clients did not connect within 5 minutes")
	}

	// Each client runs a query every interval, its first at a random
	// moment of the first interval, until the end.
	start := time.Now()
	end := start.Add(o.manyDuration)
	lat := make([][]time.Duration, len(conns))
	var queries atomic.Int64
	for i, conn := range conns {
		if conn == nil {
			continue
		}
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(i), 7))
			at := start.Add(time.Duration(r.Int64N(int64(o.manyInterval))))
			for at.Before(end) {
				if wait := time.Until(at); wait > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(wait):
					}
				}
				qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				t0 := time.Now()
				_, err := conn.Exec(qctx, "SELECT 1")
				d := time.Since(t0)
				cancel()
				if err != nil {
					fail(fmt.Errorf("client %d: %w", i, err))
				} else {
					lat[i] = append(lat[i], d)
					queries.Add(1)
				}
				at = at.Add(o.manyInterval)
				if now := time.Now(); at.Before(now) {
					at = now // late: no burst to catch up
				}
			}
		})
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	sampled = true
	res.PeakConns, res.Samples = stopSampling()
	res.Queries = queries.Load()
	res.PerSecond = float64(res.Queries) / res.Seconds
	res.Errors = errs.Load() - res.ConnectErrors
	if e := firstErr.Load(); e != nil {
		res.FirstError = *e
	}
	all := slices.Concat(lat...)
	if len(all) > 0 {
		slices.Sort(all)
		ms := func(q float64) float64 {
			return float64(all[min(len(all)-1, int(q*float64(len(all))))].Microseconds()) / 1000
		}
		res.P50ms, res.P99ms, res.Maxms = ms(0.50), ms(0.99), ms(1)
	}
	return res, nil
}

// sampleSessions counts, every 50 ms until stop is called, the client
// sessions on each shard in the databases dbs (nil: every tenant
// database), and stop returns the most seen at once on each shard and the
// number of samples.
func sampleSessions(ctx context.Context, shardDSNs []string, dbs []string) (stop func() ([]int, int64)) {
	ctx, cancel := context.WithCancel(ctx)
	peaks := make([]atomic.Int64, len(shardDSNs))
	var samples atomic.Int64
	var wg sync.WaitGroup
	for i, dsn := range shardDSNs {
		wg.Go(func() {
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				return
			}
			defer conn.Close(context.WithoutCancel(ctx))
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			for {
				var n int64
				// Straight from pg_stat_get_activity: the pg_stat_activity
				// view's join to pg_authid took 85 ms a sample with 1,000
				// tenant roles, a core's worth of a shard's CPU taken from
				// the modes measured.
				if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_get_activity(NULL) a
					WHERE a.backend_type = 'client backend'
					AND a.datid IN (SELECT oid FROM pg_database
						WHERE CASE WHEN $1::text[] IS NULL THEN datname LIKE 't\_%' ELSE datname = ANY($1) END)`, dbs).Scan(&n); err == nil {
					samples.Add(1)
					if n > peaks[i].Load() {
						peaks[i].Store(n)
					}
				}
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		})
	}
	return func() ([]int, int64) {
		cancel()
		wg.Wait()
		out := make([]int, len(peaks))
		for i := range peaks {
			out[i] = int(peaks[i].Load())
		}
		return out, samples.Load()
	}
}

func (g *globals) printProxyBench(res proxyBenchResult) error {
	if len(res.Rows) > 0 {
		fmt.Fprintf(g.stdout, "pgbench -S, %d rounds of %ds per configuration; 1 tenant: 1 pgbench, %d clients, -j 2; "+
			"%d tenants: %d pgbench, 1 client each\n"+
			"PgBouncer: transaction pooling, pool %d per database; Silo: budget %d per shard, %d per tenant; sslmode=disable\n",
			res.Rounds, res.SecondsPerRun, res.Clients, res.Clients, res.Clients, res.TenantMaxConns, res.ShardBudget, res.TenantMaxConns)
		rows := make([][]string, 0, len(res.Rows))
		var failures []string
		for _, r := range res.Rows {
			row := []string{strconv.Itoa(r.Tenants), r.Protocol, r.Target}
			if r.Skipped != "" {
				row = append(row, "skipped", "-", "-", "-", "-", "-")
				failures = append(failures, fmt.Sprintf("%s, %d tenant(s), -M %s: skipped: %s", r.Target, r.Tenants, r.Protocol, r.Skipped))
			} else if r.Failed != "" {
				row = append(row, "fails", "-", "-", "-", "-", "-")
				failures = append(failures, fmt.Sprintf("%s, %d tenant(s), -M %s: %s", r.Target, r.Tenants, r.Protocol, r.Failed))
			} else {
				vs := ""
				if r.VsPgBouncer > 0 {
					vs = fmt.Sprintf("%.2f (%.2f-%.2f)", r.VsPgBouncer, r.VsPgBouncerMin, r.VsPgBouncerMax)
				}
				cpu := ""
				if r.CPUus > 0 {
					cpu = fmt.Sprintf("%.0f", r.CPUus)
				}
				row = append(row, fmt.Sprintf("%.0f", r.TPS), fmt.Sprintf("%.2f", r.P99ms), cpu,
					fmt.Sprintf("%.2f", r.Ratio), fmt.Sprintf("%.2f-%.2f", r.RatioMin, r.RatioMax), vs)
			}
			rows = append(rows, row)
		}
		if err := g.printTable([]string{"TENANTS", "PROTOCOL", "TARGET", "TPS", "P99 MS", "PROXY CPU µS/TX", "RATIO", "RANGE", "SILO/PGBOUNCER"}, rows); err != nil {
			return err
		}
		for _, f := range failures {
			fmt.Fprintln(g.stdout, f)
		}
	}
	if m := res.Many; m != nil {
		if len(res.Rows) > 0 {
			fmt.Fprintln(g.stdout)
		}
		peaks := make([]string, len(m.PeakConns))
		for i, p := range m.PeakConns {
			peaks[i] = strconv.Itoa(p)
		}
		fmt.Fprintf(g.stdout, "%d clients over %d tenants through the endpoint, a query each every %s, for %.0fs; budget %d per shard\n",
			m.Clients, m.Tenants, m.Interval, m.Seconds, m.Budget)
		if err := g.printTable([]string{"CLIENTS", "TENANTS", "QUERIES", "QUERIES/S", "P50 MS", "P99 MS", "MAX MS", "PEAK CONNS/SHARD", "BUDGET", "SAMPLES", "CONNECT ERRORS", "ERRORS"},
			[][]string{{strconv.Itoa(m.Clients), strconv.Itoa(m.Tenants), strconv.FormatInt(m.Queries, 10), fmt.Sprintf("%.0f", m.PerSecond),
				fmt.Sprintf("%.2f", m.P50ms), fmt.Sprintf("%.2f", m.P99ms), fmt.Sprintf("%.0f", m.Maxms), strings.Join(peaks, ", "),
				strconv.Itoa(m.Budget), strconv.FormatInt(m.Samples, 10), strconv.FormatInt(m.ConnectErrors, 10), strconv.FormatInt(m.Errors, 10)}}); err != nil {
			return err
		}
		if m.FirstError != "" {
			fmt.Fprintf(g.stdout, "first error: %s\n", m.FirstError)
		}
	}
	return nil
}
