package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/migrations"
)

type migrateBench struct {
	Tenants       int     `json:"tenants"`
	Seconds       float64 `json:"seconds"`
	PerSecond     float64 `json:"tenantsPerSecond"`
	P50ms         float64 `json:"p50Ms"`
	SlowestTenant string  `json:"slowestTenant"`
	Slowestms     float64 `json:"slowestMs"`
	Failed        int     `json:"failed"`
	RunID         string  `json:"runId"`
}

func newBenchMigrateCmd(g *globals) *cobra.Command {
	var n, concurrency, perShard int
	var devDir, migrationsDir string
	var maxTime time.Duration
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Migrate N tenants to a new schema version and report tenants per second",
		Long: "Make sure N tenants (bench-migrate-0 .. N-1) exist, add one small migration (a new\n" +
			"nullable column) to the server's tenant migration directory (--tenant-migrations, as\n" +
			"server's --tenant-migrations), run it over the fleet with no canary, and print the\n" +
			"total time, tenants per second, the median and the slowest tenant. --dir reads the\n" +
			"catalog, for the per-tenant times, from a silo dev directory.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n < 1 || n > 10000 {
				return fmt.Errorf("-n %d must be 1 to 10000", n)
			}
			if migrationsDir == "" || devDir == "" {
				return usageErrorf("--tenant-migrations (the server's tenant migration directory) and --dir (its silo dev directory) are required")
			}
			catalogDSN, _, err := readDevDir(devDir)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), maxTime)
			defer cancel()
			if err := g.ensureTenants(ctx, c, "bench-migrate", n); err != nil {
				return err
			}
			// Whatever an earlier bench left behind first, so that only this
			// migration is timed.
			if err := g.migrateAll(ctx, c, nil, concurrency, perShard); err != nil {
				return fmt.Errorf("bring the fleet to the latest version first: %w", err)
			}
			name := "bench_" + strconv.FormatInt(time.Now().Unix(), 10)
			path, err := migrations.CreateFile(migrationsDir, name)
			if err != nil {
				return err
			}
			sql := fmt.Sprintf("-- A benchmark's migration.\n\n-- +goose Up\nALTER TABLE notes ADD COLUMN %s integer;\n\n-- +goose Down\nALTER TABLE notes DROP COLUMN %s;\n", name, name)
			if err := os.WriteFile(path, []byte(sql), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "added %s\n", filepath.Base(path))
			var run api.MigrationRun
			if err := g.migrateAll(ctx, c, &run, concurrency, perShard); err != nil {
				return err
			}
			res, err := migrateBenchResult(ctx, catalogDSN, run)
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(res)
			}
			fmt.Fprintf(g.stdout, "%d tenants over the shards, one migration, concurrency %d, %d per shard\n", res.Tenants, concurrency, perShard)
			return g.printTable([]string{"TENANTS", "SECONDS", "TENANTS/S", "P50 MS", "SLOWEST MS", "SLOWEST TENANT", "FAILED"},
				[][]string{{strconv.Itoa(res.Tenants), fmt.Sprintf("%.2f", res.Seconds), fmt.Sprintf("%.1f", res.PerSecond),
					fmt.Sprintf("%.1f", res.P50ms), fmt.Sprintf("%.1f", res.Slowestms), res.SlowestTenant, strconv.Itoa(res.Failed)}})
		},
	}
	cmd.Flags().IntVarP(&n, "tenants", "n", 1000, "tenants to migrate")
	cmd.Flags().IntVar(&concurrency, "concurrency", migrations.DefaultConcurrency, "the run's fleet-wide concurrency")
	cmd.Flags().IntVar(&perShard, "per-shard", migrations.DefaultPerShard, "the run's per-shard concurrency")
	cmd.Flags().StringVar(&migrationsDir, "tenant-migrations", "", "the server's tenant migration directory, where the bench adds a file")
	deprecatedAlias(cmd, "migrations", "tenant-migrations")
	cmd.Flags().StringVar(&devDir, "dir", "", "the silo dev directory (for the catalog)")
	cmd.Flags().DurationVar(&maxTime, "max-time", 30*time.Minute, "give up after this long")
	return cmd
}

// ensureTenants makes sure tenants PREFIX-0 .. n-1 exist, creating the
// missing ones through the API, 4 at a time.
func (g *globals) ensureTenants(ctx context.Context, c *api.ClientWithResponses, prefix string, n int) error {
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	wait := "30s"
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			resp, err := c.CreateTenantWithResponse(ctx, &api.CreateTenantParams{Wait: &wait}, api.TenantCreate{Id: id})
			if err == nil && resp.StatusCode() == http.StatusConflict {
				return // there already
			}
			if err = g.check(resp, err, resp != nil && resp.JSON201 != nil); err != nil {
				mu.Lock()
				firstErr = cmp(firstErr, fmt.Errorf("create tenant %s: %w", id, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return firstErr
}

// migrateAll runs the fleet up to the latest version, without a canary,
// waits for the run, and stores it in run if not nil.
func (g *globals) migrateAll(ctx context.Context, c *api.ClientWithResponses, run *api.MigrationRun, concurrency, perShard int) error {
	none := 0
	resp, err := c.StartMigrationRunWithResponse(ctx, api.MigrationRunCreate{Canary: &none, Concurrency: &concurrency, PerShard: &perShard})
	if err := g.check(resp, err, resp != nil && resp.JSON202 != nil); err != nil {
		return err
	}
	id := resp.JSON202.Id
	for {
		r, err := c.GetMigrationRunWithResponse(ctx, id.String())
		if err := g.check(r, err, r != nil && r.JSON200 != nil); err != nil {
			return err
		}
		switch r.JSON200.State {
		case api.MigrationRunStateSucceeded:
			if run != nil {
				*run = *r.JSON200
			}
			return nil
		case api.MigrationRunStateFailed, api.MigrationRunStateStopped:
			msg := ""
			if r.JSON200.Error != nil {
				msg = *r.JSON200.Error
			}
			return fmt.Errorf("migration run %s %s: %s", id, r.JSON200.State, msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// migrateBenchResult reads a finished run's per-tenant times from the
// catalog.
func migrateBenchResult(ctx context.Context, catalogDSN string, run api.MigrationRun) (migrateBench, error) {
	conn, err := pgx.Connect(ctx, catalogDSN)
	if err != nil {
		return migrateBench{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `
		SELECT tenant_id, extract(epoch FROM finished_at - started_at) * 1000
		FROM migration_tenants WHERE run_id = $1 AND state = 'done'`, run.Id.String())
	if err != nil {
		return migrateBench{}, err
	}
	type tenantTime struct {
		id string
		ms float64
	}
	times, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (tenantTime, error) {
		var t tenantTime
		return t, row.Scan(&t.id, &t.ms)
	})
	if err != nil {
		return migrateBench{}, err
	}
	res := migrateBench{Tenants: run.Progress.Total, Failed: run.Progress.Failed, RunID: run.Id.String()}
	if run.FinishedAt != nil {
		res.Seconds = run.FinishedAt.Sub(run.CreatedAt).Seconds()
		if res.Seconds > 0 {
			res.PerSecond = float64(run.Progress.Done) / res.Seconds
		}
	}
	if len(times) > 0 {
		slices.SortFunc(times, func(a, b tenantTime) int { return int(a.ms*1000 - b.ms*1000) })
		res.P50ms = times[len(times)/2].ms
		res.SlowestTenant, res.Slowestms = times[len(times)-1].id, times[len(times)-1].ms
	}
	return res, nil
}
