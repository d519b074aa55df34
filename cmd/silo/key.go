package main

import (
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
)

func newTenantKeyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Manage a tenant's API keys: tokens that reach its data, and nothing else",
		Long: "A tenant key is a bearer token for the tenant's data API (silo query, and the\n" +
			"query and transaction endpoints). It reaches no other tenant and no other endpoint.\n" +
			"Managing keys needs the admin token.",
	}
	cmd.AddCommand(newTenantKeyCreateCmd(g), newTenantKeyListCmd(g), newTenantKeyRevokeCmd(g))
	return cmd
}

func newTenantKeyCreateCmd(g *globals) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "create TENANT [--name NAME]",
		Short: "Make an API key for a tenant and print its token, this once",
		Long: "Make an API key for the tenant. The token goes to standard output, alone, so that\n" +
			"`silo tenant key create acme > acme.key` keeps it; Silo stores only a hash of it\n" +
			"and cannot show it again.",
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
			resp, err := c.CreateTenantKeyWithResponse(cmd.Context(), args[0], body)
			if err := g.check(resp, err, resp != nil && resp.JSON201 != nil); err != nil {
				return err
			}
			k := resp.JSON201
			if g.output == "json" {
				return g.printJSON(k)
			}
			if _, err := fmt.Fprintln(g.stdout, k.Token); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "Key %s (%s) of tenant %s is made. Its token, above, will not be shown again: "+
				"store it now, and give it to silo query with --key or SILO_KEY.\n", k.Id, k.Name, args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", `a name to tell the key apart, 1 to 64 characters (default "default")`)
	return cmd
}

func newTenantKeyListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list TENANT",
		Short: "List a tenant's API keys, revoked ones included (never their tokens)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			all := []api.TenantKey{}
			var cursor *string
			for {
				resp, err := c.ListTenantKeysWithResponse(cmd.Context(), args[0], &api.ListTenantKeysParams{Cursor: cursor})
				if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
					return err
				}
				all = append(all, resp.JSON200.Items...)
				if cursor = resp.JSON200.NextCursor; cursor == nil {
					break
				}
			}
			if g.output == "json" {
				return g.printJSON(all)
			}
			rows := make([][]string, 0, len(all))
			for _, k := range all {
				rows = append(rows, []string{k.Id, k.Name, k.CreatedAt.Local().Format(time.DateTime), localTime(k.LastUsedAt), localTime(k.RevokedAt)})
			}
			return g.printTable([]string{"ID", "NAME", "CREATED", "LAST USED", "REVOKED"}, rows)
		},
	}
}

func newTenantKeyRevokeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke TENANT KEY-ID",
		Short: "Revoke a tenant's API key: requests that send it fail from now on",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			resp, err := c.RevokeTenantKeyWithResponse(cmd.Context(), args[0], args[1])
			if err != nil {
				return g.requestError(err)
			}
			if resp.StatusCode() != http.StatusNoContent {
				return apiError(resp.StatusCode(), resp.Body)
			}
			if g.output == "json" {
				return g.printJSON(map[string]string{"revoked": args[1], "tenant": args[0]})
			}
			_, err = fmt.Fprintf(g.stdout, "key %s of tenant %s revoked\n", args[1], args[0])
			return err
		},
	}
}

// localTime formats an optional time for a table; never is empty.
func localTime(t *time.Time) string {
	if t == nil {
		return ""
	}
	return t.Local().Format(time.DateTime)
}
