package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/shardmap"
)

func newOperationListCmd(g *globals) *cobra.Command {
	var tenant, state, kind string
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List operations, newest first",
		Long: "List tenants' operations (create, suspend, resume, delete, purge, move), newest first,\n" +
			"those of purged tenants and undone creates included. Filters combine. Show one with\n" +
			"its steps with `silo operation get ID`.",
		Example: "  silo operation list --state failed\n" +
			"  silo operation list --tenant acme --kind move -o json",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 {
				return fmt.Errorf("--limit %d must be at least 1", limit)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var ops []api.Operation
			var cursor *string
			for len(ops) < limit {
				pageSize := min(limit-len(ops), shardmap.MaxOperationPageLimit)
				p := &api.ListOperationsParams{Limit: &pageSize, Cursor: cursor, Tenant: optional(tenant)}
				if state != "" {
					p.State = (*api.OperationState)(&state)
				}
				if kind != "" {
					p.Kind = (*api.OperationKind)(&kind)
				}
				resp, err := c.ListOperationsWithResponse(cmd.Context(), p)
				if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
					return err
				}
				ops = append(ops, resp.JSON200.Items...)
				if cursor = resp.JSON200.NextCursor; cursor == nil {
					break
				}
			}
			return g.printOperations(ops)
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "only this tenant's operations")
	cmd.Flags().StringVar(&state, "state", "", "only operations in this state: running, succeeded or failed")
	cmd.Flags().StringVar(&kind, "kind", "", "only operations of this kind: create, suspend, resume, delete, purge, move or import")
	cmd.Flags().IntVar(&limit, "limit", shardmap.DefaultOperationPageLimit, "how many operations to show at most")
	return cmd
}

// printOperations prints operations as a table, one line each, or as a JSON
// array.
func (g *globals) printOperations(ops []api.Operation) error {
	if g.output == "json" {
		if ops == nil {
			ops = []api.Operation{}
		}
		return g.printJSON(ops)
	}
	rows := make([][]string, 0, len(ops))
	for _, op := range ops {
		finished := ""
		if op.FinishedAt != nil {
			finished = op.FinishedAt.Local().Format(time.DateTime)
		}
		errText := deref(op.Error)
		if op.ErrorCode != nil {
			errText += " (" + *op.ErrorCode + ")"
		}
		rows = append(rows, []string{op.Id, string(op.Kind), op.TenantId, string(op.State),
			op.CreatedAt.Local().Format(time.DateTime), finished, errText})
	}
	return g.printTable([]string{"ID", "KIND", "TENANT", "STATE", "CREATED", "FINISHED", "ERROR"}, rows)
}
