package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
)

func newShardCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "shard",
		Short: "Manage shards: the PostgreSQL servers that hold tenant databases",
	}
	cmd.AddCommand(newShardAddCmd(g), newShardListCmd(g), newShardGetCmd(g),
		newShardStateCmd(g, "drain", "Stop placing tenants on a shard, to empty it"),
		newShardStateCmd(g, "activate", "Return a draining or disabled shard to service"),
		newShardStateCmd(g, "disable", "Keep a shard out of placement and moves"),
		newShardRemoveCmd(g))
	return cmd
}

func newShardAddCmd(g *globals) *cobra.Command {
	var dsn, region string
	var weight int
	cmd := &cobra.Command{
		Use:   "add NAME --dsn DSN",
		Short: "Register a shard (Silo connects to it first)",
		Long: "Register a PostgreSQL server as a shard. The DSN's role must be a superuser or have\n" +
			"CREATEDB and CREATEROLE. Pass --dsn - to read the DSN from standard input, keeping its\n" +
			"password out of the process list.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dsn == "-" {
				line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if err != nil && err != io.EOF {
					return fmt.Errorf("read the DSN from standard input: %v", err)
				}
				dsn = strings.TrimSpace(line)
			}
			if dsn == "" {
				return fmt.Errorf("--dsn is required")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			body := api.ShardCreate{Name: args[0], Dsn: dsn}
			if cmd.Flags().Changed("region") {
				body.Region = &region
			}
			if cmd.Flags().Changed("weight") {
				body.Weight = &weight
			}
			resp, err := c.CreateShardWithResponse(cmd.Context(), body)
			if err := g.check(resp, err, resp != nil && resp.JSON201 != nil); err != nil {
				return err
			}
			return g.printShards([]api.Shard{*resp.JSON201}, false)
		},
	}
	cmd.Flags().StringVar(&dsn, "dsn", "", "PostgreSQL connection string of the shard, or - for standard input")
	cmd.Flags().StringVar(&region, "region", "", "data-residency region (default \"default\")")
	cmd.Flags().IntVar(&weight, "weight", 100, "relative capacity, 1 to 10000")
	return cmd
}

func newShardListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List shards with their state and tenant count",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var all []api.Shard
			var cursor *string
			for {
				resp, err := c.ListShardsWithResponse(cmd.Context(), &api.ListShardsParams{Cursor: cursor})
				if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
					return err
				}
				all = append(all, resp.JSON200.Items...)
				if cursor = resp.JSON200.NextCursor; cursor == nil {
					break
				}
			}
			return g.printShards(all, true)
		},
	}
}

func newShardGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show one shard",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			resp, err := c.GetShardWithResponse(cmd.Context(), args[0])
			if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
				return err
			}
			return g.printShards([]api.Shard{*resp.JSON200}, false)
		},
	}
}

func newShardStateCmd(g *globals, verb, short string) *cobra.Command {
	var w waitFlags
	cmd := &cobra.Command{
		Use:   verb + " NAME",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := w.validate(cmd); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			call := map[string]func() (*http.Response, error){
				"drain":    func() (*http.Response, error) { return c.DrainShard(cmd.Context(), args[0]) },
				"activate": func() (*http.Response, error) { return c.ActivateShard(cmd.Context(), args[0]) },
				"disable":  func() (*http.Response, error) { return c.DisableShard(cmd.Context(), args[0]) },
			}[verb]
			raw, err := call()
			if err != nil {
				return g.requestError(err)
			}
			resp, err := api.ParseGetShardResponse(raw) // same shape: a Shard or a problem
			if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
				return err
			}
			if w.wait {
				wctx, cancel := w.context(cmd.Context())
				defer cancel()
				if err := g.waitDrained(wctx, c, args[0]); err != nil {
					return err
				}
				resp, err = c.GetShardWithResponse(cmd.Context(), args[0]) // as it is now
				if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
					return err
				}
			}
			return g.printShards([]api.Shard{*resp.JSON200}, false)
		},
	}
	if verb == "drain" {
		cmd.Long = "Mark a shard draining: it gets no new tenants, and each of its active tenants starts\n" +
			"moving, live, to the least loaded active shard of its region. With --wait, wait until\n" +
			"none is left active or moving (Ctrl-C stops waiting; the moves go on). Suspended and\n" +
			"deleted tenants stay: resume or purge them, then `silo shard remove`."
		addWaitFlags(cmd, &w, false, "no tenant of the shard is active or moving")
	}
	return cmd
}

// waitDrained waits until a shard has no tenant that is active or moving,
// and the moves of those it had have ended (a move's cleanup runs after
// its flip, while the tenant is already active elsewhere: a delete or a
// move of it then is refused until the cleanup is done), printing how many
// are left as they go.
func (g *globals) waitDrained(ctx context.Context, c *api.ClientWithResponses, shard string) error {
	var moved []string // the tenants the drain moves off the shard
	for _, state := range []api.TenantState{api.TenantStateActive, api.TenantStateMoving} {
		ids, err := g.shardTenants(ctx, c, shard, state)
		if err != nil {
			return err
		}
		moved = append(moved, ids...)
	}
	last := -1
	for {
		left := 0
		for _, state := range []api.TenantState{api.TenantStateActive, api.TenantStateMoving} {
			ids, err := g.shardTenants(ctx, c, shard, state)
			if ctx.Err() != nil {
				return stillRunning(ctx, "the moves off shard "+shard, "silo shard get "+shard)
			}
			if err != nil {
				return err
			}
			left += len(ids)
		}
		if left == 0 {
			// Off the shard: each move's cleanup, after its flip, too.
			for _, id := range moved {
				running, err := g.runningOperation(ctx, c, id)
				if ctx.Err() != nil {
					return stillRunning(ctx, "the moves off shard "+shard, "silo shard get "+shard)
				}
				if err != nil {
					return err
				}
				if running {
					left++
				}
			}
		}
		if left != last {
			fmt.Fprintf(g.stderr, "shard %s: %s left to move\n", shard, plural(int64(left), "tenant"))
			last = left
		}
		if left == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return stillRunning(ctx, "the moves off shard "+shard, "silo shard get "+shard)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// runningOperation reports whether a tenant has an operation running.
func (g *globals) runningOperation(ctx context.Context, c *api.ClientWithResponses, tenant string) (bool, error) {
	running, limit := api.OperationStateRunning, 1
	resp, err := c.ListOperationsWithResponse(ctx, &api.ListOperationsParams{Tenant: &tenant, State: &running, Limit: &limit})
	if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
		return false, err
	}
	return len(resp.JSON200.Items) > 0, nil
}

// shardTenants lists the ids of a shard's tenants in one state, page by
// page.
func (g *globals) shardTenants(ctx context.Context, c *api.ClientWithResponses, shard string, state api.TenantState) ([]string, error) {
	limit := 1000
	var cursor *string
	var ids []string
	for {
		resp, err := c.ListTenantsWithResponse(ctx, &api.ListTenantsParams{Shard: &shard, State: &state, Limit: &limit, Cursor: cursor})
		if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
			return nil, err
		}
		for _, t := range resp.JSON200.Items {
			ids = append(ids, t.Id)
		}
		if cursor = resp.JSON200.NextCursor; cursor == nil {
			return ids, nil
		}
	}
}

func newShardRemoveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a shard that holds no tenants from the catalog",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			resp, err := c.DeleteShardWithResponse(cmd.Context(), args[0])
			if err != nil {
				return g.requestError(err)
			}
			if resp.StatusCode() != http.StatusNoContent {
				return apiError(resp.StatusCode(), resp.Body)
			}
			if g.output == "json" {
				return g.printJSON(map[string]string{"removed": args[0]})
			}
			_, err = fmt.Fprintf(g.stdout, "shard %s removed\n", args[0])
			return err
		},
	}
}

// printShards prints shards as a table, or as JSON: an array for lists and
// the object itself for single shards.
func (g *globals) printShards(shards []api.Shard, list bool) error {
	if g.output == "json" {
		if list {
			if shards == nil {
				shards = []api.Shard{}
			}
			return g.printJSON(shards)
		}
		return g.printJSON(shards[0])
	}
	rows := make([][]string, 0, len(shards))
	for _, s := range shards {
		rows = append(rows, []string{s.Name, string(s.State), s.Region, strconv.Itoa(s.Weight), strconv.Itoa(s.TenantCount), s.Dsn})
	}
	return g.printTable([]string{"NAME", "STATE", "REGION", "WEIGHT", "TENANTS", "DSN"}, rows)
}
