package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
)

func newBenchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a running control plane",
	}
	cmd.AddCommand(newBenchProvisionCmd(g), newBenchRouteCmd(g), newBenchMigrateCmd(g), newBenchMoveCmd(g), newBenchProxyCmd(g))
	return cmd
}

type provisionBench struct {
	Tenants     int     `json:"tenants"`
	Concurrency int     `json:"concurrency"`
	WarmPool    int     `json:"warmPoolReady"`
	Seconds     float64 `json:"seconds"`
	PerSecond   float64 `json:"tenantsPerSecond"`
	P50ms       float64 `json:"p50Ms"`
	P99ms       float64 `json:"p99Ms"`
	Maxms       float64 `json:"maxMs"`
	Errors      int     `json:"errors"`
}

func newBenchProvisionCmd(g *globals) *cobra.Command {
	var n, concurrency, waitWarm int
	var keep bool
	var maxTime time.Duration
	cmd := &cobra.Command{
		Use:   "provision",
		Short: "Create N tenants and report create latency and throughput",
		Long: "Create N tenants through the API with C clients, and print p50 and p99 create latency\n" +
			"and tenants per second. With --wait-warm K it first waits until the shards' warm pools\n" +
			"hold K ready databases in all (read from /metrics). The tenants are purged afterwards\n" +
			"unless --keep.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n < 1 || n > 10000 || concurrency < 1 || concurrency > 256 {
				return fmt.Errorf("-n must be 1 to 10000 and -c 1 to 256")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), maxTime)
			defer cancel()
			ready, err := g.waitWarm(ctx, waitWarm)
			if err != nil {
				return err
			}
			prefix := "bench-" + strings.ToLower(rand.Text()[:6])
			ids := make(chan string, n)
			for i := range n {
				ids <- fmt.Sprintf("%s-%d", prefix, i)
			}
			close(ids)
			var mu sync.Mutex
			var latencies []time.Duration
			var created []string
			errs := 0
			start := time.Now()
			var wg sync.WaitGroup
			for range concurrency {
				wg.Go(func() {
					for id := range ids {
						if ctx.Err() != nil {
							return
						}
						t0 := time.Now()
						resp, err := c.CreateTenantWithResponse(ctx, &api.CreateTenantParams{}, api.TenantCreate{Id: id})
						d := time.Since(t0)
						mu.Lock()
						if err == nil && resp.StatusCode() == http.StatusCreated {
							latencies = append(latencies, d)
							created = append(created, id)
						} else {
							errs++
							if errs <= 3 {
								msg := fmt.Sprint(err)
								if err == nil {
									msg = apiError(resp.StatusCode(), resp.Body).Error()
								}
								fmt.Fprintf(g.stderr, "create %s: %s\n", id, msg)
							}
						}
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			res := provisionBench{
				Tenants: len(latencies), Concurrency: concurrency, WarmPool: ready,
				Seconds: elapsed.Seconds(), PerSecond: float64(len(latencies)) / elapsed.Seconds(), Errors: errs,
			}
			if len(latencies) > 0 {
				slices.Sort(latencies)
				ms := func(q float64) float64 {
					return float64(latencies[min(len(latencies)-1, int(q*float64(len(latencies))))].Microseconds()) / 1000
				}
				res.P50ms, res.P99ms, res.Maxms = ms(0.50), ms(0.99), ms(1)
			}
			if !keep {
				g.purgeAll(context.WithoutCancel(ctx), created)
			}
			if g.output == "json" {
				return g.printJSON(res)
			}
			return g.printTable([]string{"TENANTS", "CLIENTS", "WARM", "SECONDS", "TENANTS/S", "P50 MS", "P99 MS", "MAX MS", "ERRORS"},
				[][]string{{strconv.Itoa(res.Tenants), strconv.Itoa(res.Concurrency), strconv.Itoa(res.WarmPool),
					fmt.Sprintf("%.2f", res.Seconds), fmt.Sprintf("%.1f", res.PerSecond),
					fmt.Sprintf("%.1f", res.P50ms), fmt.Sprintf("%.1f", res.P99ms), fmt.Sprintf("%.1f", res.Maxms),
					strconv.Itoa(res.Errors)}})
		},
	}
	cmd.Flags().IntVarP(&n, "tenants", "n", 100, "tenants to create")
	cmd.Flags().IntVarP(&concurrency, "clients", "c", 4, "concurrent clients")
	deprecatedAlias(cmd, "concurrency", "clients")
	cmd.Flags().IntVar(&waitWarm, "wait-warm", 0, "wait until the warm pools hold this many ready databases in all")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the tenants instead of purging them")
	cmd.Flags().DurationVar(&maxTime, "max-time", 10*time.Minute, "stop after this long")
	return cmd
}

// waitWarm waits until the sum of silo_warm_pool_databases on /metrics is
// at least want, and returns the sum seen.
func (g *globals) waitWarm(ctx context.Context, want int) (int, error) {
	for {
		have, err := g.warmReady(ctx)
		if err != nil || have >= want {
			return have, err
		}
		select {
		case <-ctx.Done():
			return have, fmt.Errorf("the warm pools hold %d ready databases, not %d, after waiting", have, want)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (g *globals) warmReady(ctx context.Context) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(g.url, "/")+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, g.requestError(err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "silo_warm_pool_databases{") {
			if f := strings.Fields(line); len(f) == 2 {
				v, _ := strconv.ParseFloat(f[1], 64)
				sum += v
			}
		}
	}
	return int(sum), sc.Err()
}

// purgeAll purges the bench's tenants, a few at a time.
func (g *globals) purgeAll(ctx context.Context, ids []string) {
	c, err := g.client()
	if err != nil {
		return
	}
	purge := true
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for _, id := range ids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, _ = c.DeleteTenantWithResponse(ctx, id, &api.DeleteTenantParams{Purge: &purge})
		})
	}
	wg.Wait()
}
