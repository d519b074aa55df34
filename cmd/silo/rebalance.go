package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
)

func newRebalanceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rebalance",
		Short: "Even out the shards: plan tenant moves",
	}
	var by string
	var maxMoves int
	plan := &cobra.Command{
		Use:   "plan",
		Short: "Print the moves that would even out the active shards (nothing moves)",
		Long: "Read every active shard's active tenants (with --by bytes, their databases' sizes too)\n" +
			"and print the moves that bring each shard's load per unit of weight within 10% of its\n" +
			"region's weighted mean, and each shard's load before and after. Tenants stay in their\n" +
			"region. Each move is then `silo tenant move ID --to SHARD`.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			params := &api.PlanRebalanceParams{}
			if cmd.Flags().Changed("by") {
				b := api.PlanRebalanceParamsBy(by)
				params.By = &b
			}
			if cmd.Flags().Changed("max-moves") {
				params.MaxMoves = &maxMoves
			}
			resp, err := c.PlanRebalanceWithResponse(cmd.Context(), params)
			if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
				return err
			}
			p := resp.JSON200
			if g.output == "json" {
				return g.printJSON(p)
			}
			rows := make([][]string, 0, len(p.Shards))
			for _, s := range p.Shards {
				rows = append(rows, []string{s.Shard, s.Region, strconv.Itoa(s.Weight),
					fmt.Sprintf("%d -> %d", s.Tenants, s.TenantsAfter), fmt.Sprintf("%s -> %s", size(s.Bytes), size(s.BytesAfter))})
			}
			if err := g.printTable([]string{"SHARD", "REGION", "WEIGHT", "TENANTS", "BYTES"}, rows); err != nil {
				return err
			}
			if len(p.Moves) == 0 {
				fmt.Fprintf(g.stdout, "\nBalanced by %s: no move needed.\n", p.By)
				return nil
			}
			fmt.Fprintf(g.stdout, "\n%d moves, balancing by %s:\n", len(p.Moves), p.By)
			rows = rows[:0]
			for _, m := range p.Moves {
				rows = append(rows, []string{m.Tenant, m.From, m.To, size(m.Bytes)})
			}
			return g.printTable([]string{"TENANT", "FROM", "TO", "SIZE"}, rows)
		},
	}
	plan.Flags().StringVar(&by, "by", "tenants", "balance tenants or bytes")
	plan.Flags().IntVar(&maxMoves, "max-moves", 0, "at most this many moves (0: no limit)")
	cmd.AddCommand(plan, newRebalanceApplyCmd(g))
	return cmd
}

func newRebalanceApplyCmd(g *globals) *cobra.Command {
	var by string
	var maxMoves int
	var w waitFlags
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Start the moves that even out the active shards",
		Long: "Plan as `silo rebalance plan` does and start each move, live, as an operation of its\n" +
			"own (each server runs a few at a time). With --wait, follow them until every one has\n" +
			"ended; Ctrl-C stops waiting, and the moves go on.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := w.validate(cmd); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var body api.RebalanceApply
			if cmd.Flags().Changed("by") {
				b := api.RebalanceApplyBy(by)
				body.By = &b
			}
			if cmd.Flags().Changed("max-moves") {
				body.MaxMoves = &maxMoves
			}
			resp, err := c.ApplyRebalanceWithResponse(cmd.Context(), body)
			if err := g.check(resp, err, resp != nil && resp.JSON202 != nil); err != nil {
				return err
			}
			moves := resp.JSON202.Moves
			state := map[string]string{}
			failed := 0
			for _, m := range moves {
				if m.OperationId == nil {
					failed++
				}
			}
			lastRunning := -1
			tty := isTerminal(g.stderr)
			wctx, cancel := w.context(cmd.Context())
			defer cancel()
			var interrupted error
			for w.wait {
				running := 0
				for _, m := range moves {
					if m.OperationId == nil {
						continue
					}
					op, err := c.GetOperationWithResponse(wctx, *m.OperationId)
					if wctx.Err() != nil {
						break
					}
					if err := g.check(op, err, op != nil && op.JSON200 != nil); err != nil {
						return err
					}
					state[*m.OperationId] = string(op.JSON200.State)
					if op.JSON200.State == api.OperationStateRunning {
						running++
					}
				}
				if wctx.Err() != nil {
					if tty {
						fmt.Fprintln(g.stderr)
					}
					interrupted = stillRunning(wctx, "the moves", "silo operation get ID")
					break
				}
				started := len(moves) - failed
				if tty {
					// A bar rewritten in place: moves ended of those started.
					const width = 20
					filled := 0
					if started > 0 {
						filled = (started - running) * width / started
					}
					fmt.Fprintf(g.stderr, "\r[%s%s] %d/%d moves done\033[K", strings.Repeat("#", filled),
						strings.Repeat("-", width-filled), started-running, started)
					if running == 0 {
						fmt.Fprintln(g.stderr)
					}
				} else if running != lastRunning {
					fmt.Fprintf(g.stderr, "%d of %d moves running\n", running, len(moves))
					lastRunning = running
				}
				if running == 0 {
					break
				}
				select {
				case <-wctx.Done():
				case <-time.After(time.Second):
				}
			}
			if g.output == "json" {
				return g.printJSON(resp.JSON202)
			}
			if len(moves) == 0 {
				fmt.Fprintln(g.stdout, "Balanced: no move needed.")
				return nil
			}
			rows := make([][]string, 0, len(moves))
			for _, m := range moves {
				op, st := "-", "not started"
				if m.OperationId != nil {
					op, st = *m.OperationId, "started"
					if s, ok := state[op]; ok {
						st = s
						if s == string(api.OperationStateFailed) {
							failed++
						}
					}
				}
				if m.Error != nil {
					st += ": " + *m.Error
				}
				rows = append(rows, []string{m.Tenant, m.From, m.To, op, st})
			}
			if err := g.printTable([]string{"TENANT", "FROM", "TO", "OPERATION", "STATE"}, rows); err != nil {
				return err
			}
			if interrupted != nil {
				return interrupted
			}
			if failed > 0 {
				return withExit(exitPartial, fmt.Errorf("%d of %d moves failed or did not start", failed, len(moves)))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&by, "by", "tenants", "balance tenants or bytes")
	cmd.Flags().IntVar(&maxMoves, "max-moves", 0, "at most this many moves (0: no limit)")
	addWaitFlags(cmd, &w, false, "every move has ended")
	return cmd
}
