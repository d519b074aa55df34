package main

import (
	"encoding/json"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
)

func newAuditCmd(g *globals) *cobra.Command {
	var action, target, actor string
	var limit int
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit log, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var entries []api.AuditEntry
			var cursor *string
			for len(entries) < limit {
				pageSize := min(limit-len(entries), 1000)
				p := &api.ListAuditParams{Limit: &pageSize, Cursor: cursor}
				p.Action, p.Target, p.Actor = optional(action), optional(target), optional(actor)
				resp, err := c.ListAuditWithResponse(cmd.Context(), p)
				if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
					return err
				}
				entries = append(entries, resp.JSON200.Items...)
				if cursor = resp.JSON200.NextCursor; cursor == nil {
					break
				}
			}
			if g.output == "json" {
				if entries == nil {
					entries = []api.AuditEntry{}
				}
				return g.printJSON(entries)
			}
			rows := make([][]string, 0, len(entries))
			for _, e := range entries {
				params, _ := json.Marshal(e.Params)
				result := e.Result
				if e.Error != nil {
					result += ": " + *e.Error
				}
				rows = append(rows, []string{strconv.FormatInt(e.Id, 10), e.Time.Local().Format("2006-01-02 15:04:05"), e.Actor, e.Action, e.Target, result, string(params)})
			}
			return g.printTable([]string{"ID", "TIME", "ACTOR", "ACTION", "TARGET", "RESULT", "PARAMS"}, rows)
		},
	}
	cmd.Flags().StringVar(&action, "action", "", "only entries of this action, e.g. shard.create")
	cmd.Flags().StringVar(&target, "target", "", "only entries about this target, e.g. shard/eu-1")
	cmd.Flags().StringVar(&actor, "actor", "", "only entries by this actor")
	cmd.Flags().IntVar(&limit, "limit", 50, "how many entries to show at most")
	return cmd
}

// optional returns nil for "" (a filter not given) and &s otherwise.
func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
