package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
)

func newTenantConnectCmd(g *globals) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "connect TENANT [--name NAME]",
		Short: "Make a key and print a connection string for any PostgreSQL client",
		Long: "Make an API key for the tenant and print a postgres:// connection string for the\n" +
			"server's wire-protocol endpoint (silo serve --pg-listen; on in silo dev), with the key's\n" +
			"token as the password. Any PostgreSQL client takes it:\n\n" +
			"  psql \"$(silo tenant connect acme)\"\n" +
			"  pg_restore --clean --if-exists --no-owner --no-privileges \\\n" +
			"      -d \"$(silo tenant connect acme)\" acme.dump\n\n" +
			"The string goes to standard output, alone; Silo keeps only a hash of the token and\n" +
			"cannot show it again. Add options=-c%20silo.pool_mode%3Dsession for a session of the\n" +
			"client's own (LISTEN, session advisory locks, WITH HOLD cursors).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var body api.TenantKeyCreate
			if cmd.Flags().Changed("name") {
				body.Name = &name
			}
			resp, err := c.ConnectTenantWithResponse(cmd.Context(), args[0], body)
			if err := g.check(resp, err, resp != nil && resp.JSON201 != nil); err != nil {
				return err
			}
			k := resp.JSON201
			if g.output == "json" {
				return g.printJSON(k)
			}
			if _, err := fmt.Fprintln(g.stdout, k.Dsn); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "Key %s (%s) of tenant %s is made; the connection string above holds its token, "+
				"which will not be shown again.\n", k.Id, k.Name, args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", `a name to tell the key apart, 1 to 64 characters (default "connect")`)
	return cmd
}
