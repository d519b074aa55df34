package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
)

func newCheckCmd(g *globals) *cobra.Command {
	var repair bool
	cmd := &cobra.Command{
		Use:   "check [--repair]",
		Short: "Compare the catalog with every shard; --repair fixes what is safe to fix",
		Long: "Compare the catalog with every shard and list what disagrees: databases, roles,\n" +
			"replication slots, publications, subscriptions and warm units of Silo's naming that\n" +
			"nothing in the catalog names; tenants whose database or role is missing, or whose\n" +
			"database is at another schema version than the catalog says; retired copies of moved\n" +
			"tenants past their time; materialized views never populated; shards that cannot be\n" +
			"read. What an operation in progress names is in flight and never listed.\n\n" +
			"--repair then drops the orphans that nothing in the catalog names (the catalog is asked\n" +
			"again right before each drop) and the retired copies past their time, audited as\n" +
			"check.repair, and checks again. It never drops a database that a tenant, an operation,\n" +
			"a warm unit or a retired copy names; the rest is for an operator.\n\n" +
			"The command exits 0 only when the fleet is clean (after the repair, with --repair).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var rep api.CheckReport
			if repair {
				resp, err := c.RepairFleetWithResponse(cmd.Context())
				if err := g.checkLine(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
					return err
				}
				rep = resp.JSON200.Report
				if g.output == "json" {
					err = g.printJSON(resp.JSON200)
				} else {
					err = g.printRepairs(resp.JSON200.Repairs)
				}
				if err != nil {
					return err
				}
			} else {
				resp, err := c.CheckFleetWithResponse(cmd.Context())
				if err := g.checkLine(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
					return err
				}
				rep = *resp.JSON200
				if g.output == "json" {
					if err := g.printJSON(rep); err != nil {
						return err
					}
				}
			}
			if g.output != "json" {
				if err := g.printCheck(rep); err != nil {
					return err
				}
			}
			if n := len(rep.Findings); n > 0 {
				if repair {
					return withExit(exitPartial, fmt.Errorf("%s left after the repair", plural(int64(n), "finding")))
				}
				return withExit(exitPartial, fmt.Errorf("%s", plural(int64(n), "finding")))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&repair, "repair", false, "fix what is safe to fix, then check again")
	return cmd
}

// printCheck prints a check's summary line and its findings as a table.
func (g *globals) printCheck(rep api.CheckReport) error {
	status := "clean"
	if n := len(rep.Findings); n > 0 {
		status = plural(int64(n), "finding")
		if fixable := countRepairable(rep.Findings); fixable > 0 {
			status += fmt.Sprintf(", %d repairable with --repair", fixable)
		}
	}
	fmt.Fprintf(g.stdout, "checked %s and %s in %d ms: %s\n", plural(int64(len(rep.Shards)), "shard"),
		plural(int64(rep.Tenants), "tenant"), rep.DurationMs, status)
	if rep.InFlight > 0 {
		fmt.Fprintf(g.stdout, "%s in flight (an operation or a migration in progress) left alone\n", plural(int64(rep.InFlight), "tenant"))
	}
	if len(rep.Findings) == 0 {
		return nil
	}
	fmt.Fprintln(g.stdout)
	rows := make([][]string, 0, len(rep.Findings))
	for _, f := range rep.Findings {
		fix := "no"
		if f.Repairable {
			fix = "yes"
		}
		rows = append(rows, []string{string(f.Kind), f.Shard, object(f.Object, deref(f.Database)), deref(f.TenantId), fix, f.Message})
	}
	return g.printTable([]string{"KIND", "SHARD", "OBJECT", "TENANT", "REPAIRABLE", "MESSAGE"}, rows)
}

// printRepairs prints what a repair did, before the check that followed it.
func (g *globals) printRepairs(repairs []api.CheckRepairResult) error {
	if len(repairs) == 0 {
		fmt.Fprintln(g.stdout, "nothing to repair")
		return nil
	}
	rows := make([][]string, 0, len(repairs))
	for _, r := range repairs {
		rows = append(rows, []string{string(r.Outcome), string(r.Kind), r.Shard, object(r.Object, deref(r.Database)), deref(r.Error)})
	}
	if err := g.printTable([]string{"REPAIR", "KIND", "SHARD", "OBJECT", "ERROR"}, rows); err != nil {
		return err
	}
	fmt.Fprintln(g.stdout)
	return nil
}

func countRepairable(fs []api.CheckFinding) int {
	n := 0
	for _, f := range fs {
		if f.Repairable {
			n++
		}
	}
	return n
}

// object names a finding's object, in its database when it lives in one.
func object(name, db string) string {
	if db == "" || db == name {
		return name
	}
	return db + "/" + name
}
