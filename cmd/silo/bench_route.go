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
}

func newBenchRouteCmd(g *globals) *cobra.Command {
	var n, clients, budget int
	var dur time.Duration
	var devDir, catalogDSN, secretKey string
	cmd := &cobra.Command{
		Use:   "route",
		Short: "Compare point selects through pgx pools, the router and the HTTP query API",
		Long: "Make (or reuse) N tenants with a row each, then run point selects with C clients on a\n" +
			"zipf-skewed choice of tenant for a fixed time through (a) one pgx pool straight to each\n" +
			"tenant database, the baseline, (b) the router library, and (c) the HTTP query API, and\n" +
			"print throughput, p50 and p99 of each and its ratio to the baseline. The router runs in\n" +
			"this process with --shard-budget; it needs the catalog and the secret key: --dir\n" +
			"reads them from a silo dev directory.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if devDir != "" {
				var err error
				if catalogDSN, secretKey, err = readDevDir(devDir); err != nil {
					return err
				}
			}
			if catalogDSN == "" || secretKey == "" {
				return fmt.Errorf("--dir, or --catalog-dsn and --secret-key, are required")
			}
			key, err := shardmap.ParseSecretKey(secretKey)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			log := slog.New(slog.NewJSONHandler(io.Discard, nil))
			pool, err := shardmap.OpenCatalog(ctx, catalogDSN, 8, 5*time.Second, 30*time.Second)
			if err != nil {
				return err
			}
			defer pool.Close()
			store, err := shardmap.New(shardmap.Config{Pool: pool, Logger: log})
			if err != nil {
				return err
			}
			rt, err := router.New(router.Config{Catalog: pool, Store: store, SecretKey: key, Logger: log,
				ShardBudget: budget, AcquireTimeout: 30 * time.Second})
			if err != nil {
				return err
			}
			if err := rt.Start(ctx); err != nil {
				return err
			}
			defer rt.Stop()

			ids, err := g.benchTenants(ctx, c, rt, n)
			if err != nil {
				return err
			}
			direct, closeDirect, err := directPools(ctx, store, key, ids)
			if err != nil {
				return err
			}
			defer closeDirect()

			pick := func(r *rand.Rand, z *rand.Zipf) string { return ids[z.Uint64()] }
			hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
			const q = "SELECT id, title FROM notes WHERE id = 1"
			modes := []struct {
				name string
				op   func(ctx context.Context, id string) error
			}{
				{"pgx pools (baseline)", func(ctx context.Context, id string) error {
					var i int64
					var s string
					return direct[id].QueryRow(ctx, q).Scan(&i, &s)
				}},
				{"router library", func(ctx context.Context, id string) error {
					return rt.WithTenant(ctx, id, func(conn *pgx.Conn) error {
						var i int64
						var s string
						return conn.QueryRow(ctx, q).Scan(&i, &s)
					})
				}},
				{"HTTP query API", func(ctx context.Context, id string) error {
					return g.postQuery(ctx, hc, id, q)
				}},
			}
			var results []routeBenchResult
			for i, m := range modes {
				res := runRouteBench(ctx, clients, dur, len(ids), pick, m.op)
				// Each mode's connections go before the next runs: together
				// they would crowd the shards' max_connections.
				switch i {
				case 0:
					closeDirect()
				case 1:
					rt.Stop()
				}
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
			fmt.Fprintf(g.stdout, "%d tenants, %d clients, %s per mode, zipf-skewed point selects; router budget %d per shard\n",
				len(ids), clients, dur, budget)
			rows := make([][]string, 0, len(results))
			for _, r := range results {
				rows = append(rows, []string{r.Mode, strconv.FormatInt(r.Ops, 10), fmt.Sprintf("%.0f", r.PerSecond),
					fmt.Sprintf("%.2f", r.P50ms), fmt.Sprintf("%.2f", r.P99ms), fmt.Sprintf("%.2f", r.Ratio), strconv.FormatInt(r.Errors, 10)})
			}
			return g.printTable([]string{"MODE", "OPS", "OPS/S", "P50 MS", "P99 MS", "RATIO", "ERRORS"}, rows)
		},
	}
	cmd.Flags().IntVarP(&n, "tenants", "n", 1000, "tenants to spread the load over")
	cmd.Flags().IntVarP(&clients, "clients", "c", 16, "concurrent clients")
	cmd.Flags().DurationVar(&dur, "duration", 10*time.Second, "how long each mode runs")
	cmd.Flags().IntVar(&budget, "shard-budget", router.DefaultShardBudget, "the in-process router's connection budget per shard")
	cmd.Flags().StringVar(&devDir, "dir", "", "a silo dev directory: read the catalog and secret key from it")
	cmd.Flags().StringVar(&catalogDSN, "catalog-dsn", "", "the catalog (without --dir)")
	cmd.Flags().StringVar(&secretKey, "secret-key", "", "the secret key (without --dir)")
	return cmd
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

// directPools opens one pgx pool per tenant, straight to its database as
// its own role: the baseline Silo's router is measured against. Each holds
// one connection, closed after a second idle, so the cold tenants of a zipf
// load do not pile up past the shards' max_connections.
func directPools(ctx context.Context, store *shardmap.Store, key []byte, ids []string) (map[string]*pgxpool.Pool, func(), error) {
	sealer, err := shardmap.NewSealer(key)
	if err != nil {
		return nil, nil, err
	}
	pools := map[string]*pgxpool.Pool{}
	var once sync.Once
	closeAll := func() {
		once.Do(func() {
			for _, p := range pools {
				p.Close()
			}
		})
	}
	for _, id := range ids {
		t, err := store.GetTenant(ctx, id)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		dsn, err := store.ShardDSN(ctx, t.Shard)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		sealed, err := store.TenantSecret(ctx, id)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		pw, err := sealer.Open(sealed, id)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		cfg.ConnConfig.User, cfg.ConnConfig.Password, cfg.ConnConfig.Database = t.Database, string(pw), t.Database
		// One connection per tenant: more would overrun the shards'
		// max_connections with a few hundred tenants.
		cfg.MaxConns, cfg.MaxConnIdleTime, cfg.HealthCheckPeriod = 1, time.Second, 500*time.Millisecond
		p, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		pools[id] = p
	}
	return pools, closeAll, nil
}

// runRouteBench runs op for dur with the given clients, each picking
// tenants from a zipf distribution, and measures it.
func runRouteBench(ctx context.Context, clients int, dur time.Duration, n int,
	pick func(*rand.Rand, *rand.Zipf) string, op func(context.Context, string) error) routeBenchResult {
	ctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	var ops, errs atomic.Int64
	lat := make([][]time.Duration, clients)
	start := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(c), 42))
			z := rand.NewZipf(r, 1.1, 1, uint64(n-1))
			for ctx.Err() == nil {
				t0 := time.Now()
				err := op(ctx, pick(r, z))
				if ctx.Err() != nil {
					return // cut short by the end of the run: not counted
				}
				if err != nil {
					errs.Add(1) // failures count apart, not as throughput
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
	if len(all) > 0 {
		res.P50ms = float64(all[len(all)/2].Microseconds()) / 1000
		res.P99ms = float64(all[len(all)*99/100].Microseconds()) / 1000
	}
	return res
}

// postQuery runs one query through the HTTP query API and drains the answer.
func (g *globals) postQuery(ctx context.Context, hc *http.Client, id, sql string) error {
	body, _ := json.Marshal(map[string]any{"sql": sql})
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
