package main

import (
	"fmt"
	"strconv"

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
	cmd.AddCommand(plan)
	return cmd
}
