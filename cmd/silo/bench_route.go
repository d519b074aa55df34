package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

type routeBenchResult struct {
	Mode      string  `json:"mode"`
	Ops       int64   `json:"ops"`
	Errors    int64   `json:"errors"`
	PerSecond float64 `json:"opsPerSecond"`
	P50ms     float64 `json:"p50Ms"`
	P99ms     float64 `json:"p99Ms"`
	Ratio     float64 `json:"ratioToDirect"`
	// PeakConns is the most tenant sessions seen on one shard at a time.
	PeakConns  int    `json:"peakShardConnections"`
	FirstError string `json:"firstError,omitempty"`
}

func newBenchRouteCmd(g *globals) *cobra.Command {
	var n, clients, budget int
	var dur, warmup time.Duration
	var devDir, catalogDSN, secretKey, pgbouncerBin string
	var only []string
	var httpClient string
	cmd := &cobra.Command{
		Use:   "route",
		Short: "Compare point selects through pgx pools, the router and the HTTP query API",
		Long: "Make (or reuse) N tenants with a row each, then run point selects with C clients on a\n" +
			"zipf-skewed choice of tenant for a fixed time through (a) one pgx pool straight to each\n" +
			"tenant database, the baseline, (b) the router library, and (c) the HTTP query API, and\n" +
			"print throughput, p50 and p99 of each and its ratio to the baseline. The router runs in\n" +
			"this process with --shard-budget; it needs the catalog and the secret key: --dir\n" +
			"reads them from a silo dev directory. The HTTP mode's client is a minimal HTTP/1.1\n" +
			"load client, as wrk is, so that the server under test gets the CPU (--http-client go\n" +
			"uses net/http's instead).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if httpClient != "lean" && httpClient != "go" {
				return fmt.Errorf("--http-client: %q is not lean or go", httpClient)
			}
			for _, m := range only {
				if !slices.Contains([]string{"direct", "pgbouncer", "router", "http"}, m) {
					return fmt.Errorf("--modes: %q is not one of direct, pgbouncer, router, http", m)
				}
			}
			if devDir != "" {
				var err error
				if catalogDSN, secretKey, err = readDevDir(devDir); err != nil {
					return err
				}
			}
			if catalogDSN == "" || secretKey == "" {
				return fmt.Errorf("--dir, or --catalog-dsn and --secret-key, are required")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			pool, store, key, err := openBenchCatalog(ctx, catalogDSN, secretKey, 8)
			if err != nil {
				return err
			}
			defer pool.Close()
			log := slog.New(slog.NewJSONHandler(io.Discard, nil))
			newRouter := func() (*router.Router, error) {
				rt, err := router.New(router.Config{Catalog: pool, Store: store, SecretKey: key, Logger: log,
					ShardBudget: budget, AcquireTimeout: 30 * time.Second})
				if err == nil {
					err = rt.Start(ctx)
				}
				return rt, err
			}
			// The tenants are prepared through a router of their own,
			// stopped before any mode runs.
			rt, err := newRouter()
			if err != nil {
				return err
			}
			ids, err := g.benchTenants(ctx, c, rt, n)
			rt.Stop()
			if err != nil {
				return err
			}
			targets, shardDSNs, err := benchTargets(ctx, store, key, ids)
			if err != nil {
				return err
			}
			tenantMax := int32(router.DefaultTenantMaxConns)
			type mode struct {
				key, name string
				open      func() (op func(context.Context, string) error, closeFn func(), err error)
			}
			const q = "SELECT id, title FROM notes WHERE id = 1"
			poolOp := func(pools map[string]*pgxpool.Pool) func(context.Context, string) error {
				return func(ctx context.Context, id string) error {
					var i int64
					var s string
					return pools[id].QueryRow(ctx, q).Scan(&i, &s)
				}
			}
			modes := []mode{
				{key: "direct", name: "pgx pools (baseline)", open: func() (func(context.Context, string) error, func(), error) {
					pools, closeFn, err := directPools(ctx, targets, tenantMax)
					if err != nil {
						return nil, nil, err
					}
					return poolOp(pools), closeFn, nil
				}},
			}
			bin := findPgBouncer(pgbouncerBin)
			if bin == "" && slices.Contains(only, "pgbouncer") {
				fmt.Fprintln(g.stderr, "pgbouncer not found (apt-get install pgbouncer, or --pgbouncer PATH): its row is left out")
				only = slices.DeleteFunc(only, func(m string) bool { return m == "pgbouncer" })
			}
			modes = append(modes, mode{key: "pgbouncer", name: "PgBouncer", open: func() (func(context.Context, string) error, func(), error) {
				b, err := startPgBouncer(ctx, bin, targets, int(tenantMax))
				if err != nil {
					return nil, nil, err
				}
				pools, closeFn, err := b.Pools(ctx, targets, tenantMax)
				if err != nil {
					b.Stop()
					return nil, nil, err
				}
				return poolOp(pools), func() { closeFn(); b.Stop() }, nil
			}})
			modes = append(modes,
				mode{key: "router", name: "router library", open: func() (func(context.Context, string) error, func(), error) {
					rt, err := newRouter()
					if err != nil {
						return nil, nil, err
					}
					return func(ctx context.Context, id string) error {
						return rt.WithTenant(ctx, id, func(conn *pgx.Conn) error {
							var i int64
							var s string
							return conn.QueryRow(ctx, q).Scan(&i, &s)
						})
					}, rt.Stop, nil
				}},
				mode{key: "http", name: "HTTP query API", open: func() (func(context.Context, string) error, func(), error) {
					body, err := json.Marshal(map[string]any{"sql": q})
					if err != nil {
						return nil, nil, err
					}
					if httpClient == "go" {
						tr := &http.Transport{MaxIdleConnsPerHost: clients}
						hc := &http.Client{Timeout: 30 * time.Second, Transport: tr}
						return func(ctx context.Context, id string) error { return g.postQuery(ctx, hc, id, body) }, tr.CloseIdleConnections, nil
					}
					lc, err := newLoadClient(g.url, g.token, clients)
					if err != nil {
						return nil, nil, err
					}
					prefix := strings.TrimRight(lc.basePath, "/") + "/v1/tenants/"
					return func(ctx context.Context, id string) error {
						status, resp, err := lc.Post(ctx, prefix+id+"/query", body)
						if err == nil && status != http.StatusOK {
							err = apiError(status, resp)
						}
						return err
					}, lc.Close, nil
				}},
			)
			pick := func(r *rand.Rand, z *rand.Zipf) string { return ids[z.Uint64()] }
			var results []routeBenchResult
			for _, m := range modes {
				if !slices.Contains(only, m.key) {
					continue
				}
				op, closeFn, err := m.open()
				if err != nil {
					return fmt.Errorf("%s: %w", m.name, err)
				}
				// Every tenant once, then a warm-up run, neither counted, so
				// that every mode is measured with its pools as full as its
				// budget lets them be, as a long-running application's are.
				touchAll(ctx, clients, ids, op)
				runRouteBench(ctx, clients, warmup, len(ids), pick, op)
				stopSampling := peakConns(ctx, shardDSNs)
				res := runRouteBench(ctx, clients, dur, len(ids), pick, op)
				res.PeakConns = stopSampling()
				// Each mode's connections go before the next runs: together
				// they would crowd the shards' max_connections.
				closeFn()
				time.Sleep(time.Second)
				res.Mode = m.name
				if len(results) > 0 && results[0].PerSecond > 0 {
					res.Ratio = res.PerSecond / results[0].PerSecond
				} else {
					res.Ratio = 1
				}
				results = append(results, res)
			}
			if g.output == "json" {
				return g.printJSON(results)
			}
			fmt.Fprintf(g.stdout, "%d tenants, %d clients, %s per mode after %s warm-up, zipf-skewed point selects\n"+
				"router budget %d per shard; at most %d connections per tenant in every mode\n",
				len(ids), clients, dur, warmup, budget, tenantMax)
			rows := make([][]string, 0, len(results))
			for _, r := range results {
				rows = append(rows, []string{r.Mode, strconv.FormatInt(r.Ops, 10), fmt.Sprintf("%.0f", r.PerSecond),
					fmt.Sprintf("%.2f", r.P50ms), fmt.Sprintf("%.2f", r.P99ms), fmt.Sprintf("%.2f", r.Ratio),
					strconv.Itoa(r.PeakConns), strconv.FormatInt(r.Errors, 10)})
			}
			if err := g.printTable([]string{"MODE", "OPS", "OPS/S", "P50 MS", "P99 MS", "RATIO", "PEAK CONNS/SHARD", "ERRORS"}, rows); err != nil {
				return err
			}
			for _, r := range results {
				if r.FirstError != "" {
					fmt.Fprintf(g.stdout, "%s, first error: %s\n", r.Mode, r.FirstError)
				}
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&n, "tenants", "n", 1000, "tenants to spread the load over")
	cmd.Flags().IntVarP(&clients, "clients", "c", 16, "concurrent clients")
	cmd.Flags().DurationVar(&dur, "duration", 10*time.Second, "how long each mode is measured")
	cmd.Flags().DurationVar(&warmup, "warmup", 3*time.Second, "how long each mode runs before it is measured")
	cmd.Flags().StringSliceVar(&only, "modes", []string{"direct", "pgbouncer", "router", "http"},
		"the modes to run: direct (the baseline), pgbouncer, router, http; ratios are to the first")
	cmd.Flags().StringVar(&httpClient, "http-client", "lean", "the HTTP mode's client: lean (a minimal HTTP/1.1 load client, as wrk is) or go (net/http's)")
	cmd.Flags().StringVar(&pgbouncerBin, "pgbouncer", "", "the pgbouncer binary (default: from PATH or /usr/sbin)")
	cmd.Flags().IntVar(&budget, "shard-budget", router.DefaultShardBudget, "the in-process router's connection budget per shard")
	cmd.Flags().StringVar(&devDir, "dir", "", "a silo dev directory: read the catalog and secret key from it")
	cmd.Flags().StringVar(&catalogDSN, "catalog-dsn", "", "the catalog (without --dir)")
	cmd.Flags().StringVar(&secretKey, "secret-key", "", "the secret key (without --dir)")
	return cmd
}

// openBenchCatalog opens the catalog and parses the secret key, for a
// benchmark that runs the router in its own process. The caller closes the
// pool.
func openBenchCatalog(ctx context.Context, catalogDSN, secretKey string, conns int32) (*pgxpool.Pool, *shardmap.Store, []byte, error) {
	key, err := shardmap.ParseSecretKey(secretKey)
	if err != nil {
		return nil, nil, nil, err
	}
	pool, err := shardmap.OpenCatalog(ctx, catalogDSN, conns, 5*time.Second, 30*time.Second)
	if err != nil {
		return nil, nil, nil, err
	}
	sealer, err := shardmap.NewSealer(key)
	if err != nil {
		pool.Close()
		return nil, nil, nil, err
	}
	store, err := shardmap.New(shardmap.Config{Pool: pool, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)), Sealer: sealer})
	if err != nil {
		pool.Close()
		return nil, nil, nil, err
	}
	return pool, store, key, nil
}

// readDevDir returns the catalog DSN and secret key of a silo dev directory.
func readDevDir(dir string) (string, string, error) {
	read := func(p ...string) (string, error) {
		b, err := os.ReadFile(filepath.Join(append([]string{dir}, p...)...))
		return strings.TrimSpace(string(b)), err
	}
	password, err := read("clusters", "catalog", "password")
	if err != nil {
		return "", "", fmt.Errorf("%s is not a silo dev directory: %v", dir, err)
	}
	port, err := read("clusters", "catalog", "port")
	if err != nil {
		return "", "", err
	}
	key, err := read("secret-key")
	if err != nil {
		return "", "", err
	}
	return fmt.Sprintf("postgres://silo:%s@127.0.0.1:%s/silo?sslmode=disable", password, port), key, nil
}

// benchTenants makes sure tenants bench-route-0 .. n-1 exist, active, with
// a row in notes, and returns their ids.
func (g *globals) benchTenants(ctx context.Context, c *api.ClientWithResponses, rt *router.Router, n int) ([]string, error) {
	ids := make([]string, n)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := range ids {
		ids[i] = "bench-route-" + strconv.Itoa(i)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			err := rt.WithTenant(ctx, ids[i], func(*pgx.Conn) error { return nil })
			if silo.ErrorCode(err) == silo.ENOTFOUND {
				resp, cerr := c.CreateTenantWithResponse(ctx, &api.CreateTenantParams{}, api.TenantCreate{Id: ids[i]})
				err = g.check(resp, cerr, resp != nil && resp.JSON201 != nil)
			}
			if err == nil {
				err = rt.WithTenant(ctx, ids[i], func(conn *pgx.Conn) error {
					_, err := conn.Exec(ctx, `INSERT INTO notes (id, title) OVERRIDING SYSTEM VALUE VALUES (1, 'bench') ON CONFLICT DO NOTHING`)
					return err
				})
			}
			if err != nil {
				mu.Lock()
				firstErr = cmp(firstErr, fmt.Errorf("prepare tenant %s: %w", ids[i], err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return ids, firstErr
}

func cmp(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// benchTargets looks up how to reach each tenant's database straight on
// its shard, as its own role, and the DSN of every shard they are on.
func benchTargets(ctx context.Context, store *shardmap.Store, key []byte, ids []string) ([]benchTarget, []string, error) {
	sealer, err := shardmap.NewSealer(key)
	if err != nil {
		return nil, nil, err
	}
	shards := map[string]*pgx.ConnConfig{}
	var dsns []string
	targets := make([]benchTarget, 0, len(ids))
	for _, id := range ids {
		t, err := store.GetTenant(ctx, id)
		if err != nil {
			return nil, nil, err
		}
		sc, ok := shards[t.Shard]
		if !ok {
			dsn, err := store.ShardDSN(ctx, t.Shard)
			if err != nil {
				return nil, nil, err
			}
			if sc, err = pgx.ParseConfig(dsn); err != nil {
				return nil, nil, err
			}
			shards[t.Shard] = sc
			dsns = append(dsns, dsn)
		}
		sealed, err := store.TenantSecret(ctx, id)
		if err != nil {
			return nil, nil, err
		}
		pw, err := sealer.Open(sealed, id)
		if err != nil {
			return nil, nil, err
		}
		targets = append(targets, benchTarget{ID: id, Database: t.Database, Password: string(pw), Host: sc.Host, Port: sc.Port})
	}
	return targets, dsns, nil
}

// openPools opens one pgx pool per target, configured by config, and
// returns them by tenant id with a function that closes them all.
func openPools(ctx context.Context, targets []benchTarget, config func(benchTarget) (*pgxpool.Config, error)) (map[string]*pgxpool.Pool, func(), error) {
	pools := map[string]*pgxpool.Pool{}
	var once sync.Once
	closeAll := func() {
		once.Do(func() {
			for _, p := range pools {
				p.Close()
			}
		})
	}
	for _, t := range targets {
		cfg, err := config(t)
		if err == nil {
			pools[t.ID], err = pgxpool.NewWithConfig(ctx, cfg)
		}
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("pool for %s: %w", t.ID, err)
		}
	}
	return pools, closeAll, nil
}

// directPools opens one pgx pool per tenant, straight to its database as
// its own role: the baseline Silo's router is measured against, what an
// application without Silo would do. Each pool may hold maxConns
// connections and keeps them, so the shards need max_connections for
// every tenant in use.
func directPools(ctx context.Context, targets []benchTarget, maxConns int32) (map[string]*pgxpool.Pool, func(), error) {
	return openPools(ctx, targets, func(t benchTarget) (*pgxpool.Config, error) {
		cfg, err := pgxpool.ParseConfig(fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable",
			t.Database, t.Password, t.Host, t.Port, t.Database))
		if err != nil {
			return nil, err
		}
		cfg.MaxConns = maxConns
		return cfg, nil
	})
}

// peakConns samples, every 50 ms until stop is called, how many tenant
// sessions each shard has, and stop returns the highest count seen on
// any one shard.
func peakConns(ctx context.Context, shardDSNs []string) (stop func() int) {
	stopSampling := sampleSessions(ctx, shardDSNs, nil)
	return func() int {
		peaks, _ := stopSampling()
		return slices.Max(append(peaks, 0))
	}
}

// touchAll runs op once for every tenant, with the given clients.
func touchAll(ctx context.Context, clients int, ids []string, op func(context.Context, string) error) {
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(ids)) && ctx.Err() == nil; i = next.Add(1) - 1 {
				_ = op(ctx, ids[i]) // errors show in the measured run
			}
		})
	}
	wg.Wait()
}

// runRouteBench runs op for dur with the given clients, each picking
// tenants from a zipf distribution, and measures it.
func runRouteBench(ctx context.Context, clients int, dur time.Duration, n int,
	pick func(*rand.Rand, *rand.Zipf) string, op func(context.Context, string) error) routeBenchResult {
	ctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	var ops, errs atomic.Int64
	var firstErr atomic.Pointer[string]
	lat := make([][]time.Duration, clients)
	start := time.Now()
	end, _ := ctx.Deadline()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(c), 42))
			z := rand.NewZipf(r, 1.1, 1, uint64(n-1))
			for ctx.Err() == nil {
				t0 := time.Now()
				err := op(ctx, pick(r, z))
				if ctx.Err() != nil || time.Now().After(end) {
					// Cut short by the end of the run, which may come a
					// little before ctx's timer fires: not counted.
					return
				}
				if err != nil {
					errs.Add(1) // failures count apart, not as throughput
					msg := err.Error()
					firstErr.CompareAndSwap(nil, &msg)
					continue
				}
				lat[c] = append(lat[c], time.Since(t0))
				ops.Add(1)
			}
		})
	}
	wg.Wait()
	all := slices.Concat(lat...)
	slices.Sort(all)
	res := routeBenchResult{Ops: ops.Load(), Errors: errs.Load(), PerSecond: float64(ops.Load()) / time.Since(start).Seconds()}
	if e := firstErr.Load(); e != nil {
		res.FirstError = *e
	}
	if len(all) > 0 {
		res.P50ms = float64(all[len(all)/2].Microseconds()) / 1000
		res.P99ms = float64(all[len(all)*99/100].Microseconds()) / 1000
	}
	return res
}

// postQuery posts a query body to the tenant's HTTP query API and drains
// the answer.
func (g *globals) postQuery(ctx context.Context, hc *http.Client, id string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(g.url, "/")+"/v1/tenants/"+id+"/query", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+g.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return apiError(resp.StatusCode, raw)
	}
	return nil
}
