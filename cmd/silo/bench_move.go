package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

type moveBench struct {
	Tenant      string  `json:"tenant"`
	From        string  `json:"from"`
	To          string  `json:"to"`
	Megabytes   float64 `json:"megabytes"`
	MoveSeconds float64 `json:"moveSeconds"`
	PauseMs     float64 `json:"longestWriteGapMs"`
	Writes      int64   `json:"writes"`
	WriteErrors int64   `json:"writeErrors"`
	Reads       int64   `json:"reads"`
	ReadErrors  int64   `json:"readErrors"`
	Lost        int     `json:"rowsLost"`
	Duplicated  int     `json:"rowsDuplicated"`
}

func newBenchMoveCmd(g *globals) *cobra.Command {
	var devDir string
	var megabytes, rate int
	cmd := &cobra.Command{
		Use:   "move",
		Short: "Move a tenant under load and report the write pause, errors and rows lost",
		Long: "Make (or reuse) tenant bench-move with about --megabytes of rows, then run a writer\n" +
			"(--rate inserts per second, each acknowledged or failed) and a reader through the router\n" +
			"library while the tenant moves to another active shard of its region. Print the move's\n" +
			"time, the longest gap between acknowledged writes (the write pause), client errors, and\n" +
			"acknowledged rows missing from (or doubled on) the new shard. --dir reads the catalog and\n" +
			"secret key from a silo dev directory.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if devDir == "" {
				return fmt.Errorf("--dir (a silo dev directory) is required")
			}
			catalogDSN, secretKey, err := readDevDir(devDir)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			pool, store, key, err := openBenchCatalog(ctx, catalogDSN, secretKey, 4)
			if err != nil {
				return err
			}
			defer pool.Close()
			log := slog.New(slog.NewJSONHandler(io.Discard, nil))
			rt, err := router.New(router.Config{Catalog: pool, Store: store, SecretKey: key, Logger: log})
			if err != nil {
				return err
			}
			if err := rt.Start(ctx); err != nil {
				return err
			}
			defer rt.Stop()
			res, err := g.benchMove(ctx, c, store, rt, megabytes, rate)
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(res)
			}
			fmt.Fprintf(g.stdout, "tenant %s, %.0f MB, %s -> %s; writer at %d/s and a reader, through the router\n",
				res.Tenant, res.Megabytes, res.From, res.To, rate)
			return g.printTable([]string{"MOVE S", "WRITE PAUSE MS", "WRITES", "WRITE ERRORS", "READS", "READ ERRORS", "LOST", "DUPLICATED"},
				[][]string{{fmt.Sprintf("%.2f", res.MoveSeconds), fmt.Sprintf("%.0f", res.PauseMs), strconv.FormatInt(res.Writes, 10),
					strconv.FormatInt(res.WriteErrors, 10), strconv.FormatInt(res.Reads, 10), strconv.FormatInt(res.ReadErrors, 10),
					strconv.Itoa(res.Lost), strconv.Itoa(res.Duplicated)}})
		},
	}
	cmd.Flags().StringVar(&devDir, "dir", "", "a silo dev directory: read the catalog and secret key from it")
	cmd.Flags().IntVar(&megabytes, "megabytes", 100, "about how much data the tenant holds")
	cmd.Flags().IntVar(&rate, "rate", 200, "writes per second during the move")
	return cmd
}

func (g *globals) benchMove(ctx context.Context, c *api.ClientWithResponses, store *shardmap.Store, rt *router.Router, megabytes, rate int) (moveBench, error) {
	const id = "bench-move"
	res := moveBench{Tenant: id}
	t, err := store.GetTenant(ctx, id)
	if silo.ErrorCode(err) == silo.ENOTFOUND {
		wait := "30s"
		resp, cerr := c.CreateTenantWithResponse(ctx, &api.CreateTenantParams{Wait: &wait}, api.TenantCreate{Id: id})
		if err := g.check(resp, cerr, resp != nil && resp.JSON201 != nil); err != nil {
			return res, err
		}
		t, err = store.GetTenant(ctx, id)
	}
	if err != nil {
		return res, err
	}
	// Fill it up to about the size asked, 10 MB at a time.
	var have int64
	if err := rt.WithTenant(ctx, id, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, `SELECT pg_database_size(current_database())`).Scan(&have)
	}); err != nil {
		return res, err
	}
	for have < int64(megabytes)<<20 {
		if err := rt.WithTenant(ctx, id, func(conn *pgx.Conn) error {
			if _, err := conn.Exec(ctx, `INSERT INTO notes (title) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 10000) g`); err != nil {
				return err
			}
			return conn.QueryRow(ctx, `SELECT pg_database_size(current_database())`).Scan(&have)
		}); err != nil {
			return res, err
		}
	}
	res.Megabytes = float64(have) / (1 << 20)
	res.From = t.Shard
	// The target: another active shard of the tenant's region.
	limit := 1000
	shards, err := c.ListShardsWithResponse(ctx, &api.ListShardsParams{Limit: &limit})
	if err := g.check(shards, err, shards != nil && shards.JSON200 != nil); err != nil {
		return res, err
	}
	for _, sh := range shards.JSON200.Items {
		if sh.Name != t.Shard && sh.State == api.ShardStateActive && sh.Region == t.Region {
			res.To = sh.Name
			break
		}
	}
	if res.To == "" {
		return res, fmt.Errorf("no other active shard in region %q to move %s to", t.Region, id)
	}

	run := fmt.Sprintf("m%d-", time.Now().Unix())
	var acked sync.Map
	var writes, writeErrs, reads, readErrs atomic.Int64
	var maxGap atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // the writer
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		last := time.Now()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			title := run + strconv.Itoa(i)
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := rt.WithTenant(wctx, id, func(conn *pgx.Conn) error {
				_, err := conn.Exec(wctx, `INSERT INTO notes (title) VALUES ($1)`, title)
				return err
			})
			cancel()
			if err != nil {
				writeErrs.Add(1)
				continue
			}
			writes.Add(1)
			acked.Store(title, true)
			if gap := time.Since(last).Nanoseconds(); gap > maxGap.Load() {
				maxGap.Store(gap)
			}
			last = time.Now()
		}
	})
	wg.Go(func() { // the reader
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := rt.WithTenant(rctx, id, func(conn *pgx.Conn) error {
				var title string
				return conn.QueryRow(rctx, `SELECT title FROM notes ORDER BY id DESC LIMIT 1`).Scan(&title)
			})
			cancel()
			if err != nil {
				readErrs.Add(1)
			} else {
				reads.Add(1)
			}
		}
	})
	time.Sleep(time.Second)
	start := time.Now()
	wait := "50s"
	resp, err := c.MoveTenantWithResponse(ctx, id, &api.MoveTenantParams{Wait: &wait}, api.TenantMove{Shard: res.To})
	if err == nil && resp.JSON202 != nil {
		// Still copying after the wait: follow the operation.
		for err == nil {
			var op *api.GetOperationResponse
			op, err = c.GetOperationWithResponse(ctx, resp.JSON202.Id)
			if err = g.check(op, err, op != nil && op.JSON200 != nil); err == nil && op.JSON200.State != api.OperationStateRunning {
				if op.JSON200.State == api.OperationStateFailed {
					err = fmt.Errorf("the move failed: %v", op.JSON200.Error)
				}
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	} else {
		err = g.check(resp, err, resp != nil && resp.JSON200 != nil)
	}
	res.MoveSeconds = time.Since(start).Seconds()
	time.Sleep(time.Second) // writes on the new shard too
	close(stop)
	wg.Wait()
	if err != nil {
		return res, err
	}
	res.Writes, res.WriteErrors, res.Reads, res.ReadErrors = writes.Load(), writeErrs.Load(), reads.Load(), readErrs.Load()
	res.PauseMs = float64(maxGap.Load()) / 1e6
	// Every acknowledged row on the new shard, once.
	onTarget := map[string]int{}
	err = rt.WithTenant(ctx, id, func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, `SELECT title, count(*) FROM notes WHERE title LIKE $1 GROUP BY title`, run+"%")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var title string
			var n int
			if err := rows.Scan(&title, &n); err != nil {
				return err
			}
			onTarget[title] = n
		}
		return rows.Err()
	})
	if err != nil {
		return res, err
	}
	acked.Range(func(k, _ any) bool {
		switch n := onTarget[k.(string)]; {
		case n == 0:
			res.Lost++
		case n > 1:
			res.Duplicated++
		}
		return true
	})
	return res, nil
}
