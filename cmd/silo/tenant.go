package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
)

func newTenantCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tenant",
		Short: "Manage tenants: each a PostgreSQL database of its own on a shard",
	}
	cmd.AddCommand(newTenantCreateCmd(g), newTenantListCmd(g), newTenantGetCmd(g), newTenantConnectCmd(g),
		newTenantStateCmd(g, "suspend", "Stop a tenant's role from logging in, and end its sessions"),
		newTenantStateCmd(g, "resume", "Let a suspended tenant's role log in again"),
		newTenantDeleteCmd(g), newTenantExportCmd(g), newTenantImportCmd(g), newTenantMoveCmd(g), newTenantLimitsCmd(g))
	return cmd
}

func newOperationCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "operation",
		Short: "Follow and cancel tenant operations (create, suspend, resume, delete, purge, move)",
	}
	cmd.AddCommand(newOperationListCmd(g))
	cmd.AddCommand(&cobra.Command{
		Use:   "get ID",
		Short: "Show an operation and its steps",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			resp, err := c.GetOperationWithResponse(cmd.Context(), args[0])
			if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
				return err
			}
			return g.printOperation(*resp.JSON200)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a running operation: it is undone at its next step boundary",
		Long: "Cancel a running operation. It stops at its next step boundary and is undone, as if\n" +
			"that step had failed: a create leaves nothing behind, a move leaves the tenant on its\n" +
			"source. An operation past its point of no return (a create's activation, a move's\n" +
			"flip) can only finish, and is refused. Follow it with `silo operation get ID`.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			resp, err := c.CancelOperationWithResponse(cmd.Context(), args[0])
			if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
				return err
			}
			return g.printOperation(*resp.JSON200)
		},
	})
	return cmd
}

func newTenantCreateCmd(g *globals) *cobra.Command {
	var shard, region, key string
	var w waitFlags
	var limits silo.TenantLimits
	cmd := &cobra.Command{
		Use:   "create ID",
		Short: "Create a tenant, with its own database and login role on a shard",
		Long: "Create a tenant. Without --shard, Silo places it on the least loaded active shard\n" +
			"(of --region, if given). The command waits until the tenant is ready (--wait=false:\n" +
			"until its creation has started; `silo operation get` follows it). With\n" +
			"--idempotency-key, running the same command again returns the first outcome.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := w.validate(cmd); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			body := api.TenantCreate{Id: args[0]}
			if cmd.Flags().Changed("shard") {
				body.Shard = &shard
			}
			if cmd.Flags().Changed("region") {
				body.Region = &region
			}
			if cmd.Flags().Changed("max-connections") || cmd.Flags().Changed("temp-file-limit-mb") {
				body.Limits = &api.TenantLimits{Connections: limits.Connections, TempFileMB: limits.TempFileMB}
			}
			params := &api.CreateTenantParams{Wait: g.apiWait(w)}
			if cmd.Flags().Changed("idempotency-key") {
				params.IdempotencyKey = &key
			}
			resp, err := c.CreateTenantWithResponse(cmd.Context(), params, body)
			if err != nil {
				return g.requestError(err)
			}
			_, err = g.outcome(cmd.Context(), c, w, resp.StatusCode(), resp.Body, resp.JSON201, resp.JSON202)
			return err
		},
	}
	cmd.Flags().StringVar(&shard, "shard", "", "the active shard to place the tenant on (default: the least loaded)")
	cmd.Flags().StringVar(&region, "region", "", "place the tenant in this region, which it never leaves")
	cmd.Flags().StringVar(&key, "idempotency-key", "", "makes a retried create return the first outcome (1 to 128 characters)")
	addLimitFlags(cmd, &limits)
	addWaitFlags(cmd, &w, true, "the tenant is ready")
	return cmd
}

// addLimitFlags adds the flags of a tenant's resource bounds.
func addLimitFlags(cmd *cobra.Command, l *silo.TenantLimits) {
	cmd.Flags().IntVar(&l.Connections, "max-connections", silo.DefaultTenantConnections,
		"the most sessions the tenant's role may have on its shard, Silo's own included (-1: no limit)")
	cmd.Flags().IntVar(&l.TempFileMB, "temp-file-limit-mb", silo.DefaultTenantTempFileMB,
		"the most temporary file space one session of the tenant may use, in MiB (-1: no limit)")
}

func newTenantLimitsCmd(g *globals) *cobra.Command {
	var limits silo.TenantLimits
	cmd := &cobra.Command{
		Use:   "limits ID [--max-connections N] [--temp-file-limit-mb N]",
		Short: "Show or change a tenant's resource bounds",
		Long: "Show a tenant's resource bounds or, with flags, change them. They are set on the\n" +
			"tenant's role on its shard, where PostgreSQL enforces them for every Silo server, and\n" +
			"the tenant cannot lift them. -1 means no limit.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			got, err := c.GetTenantWithResponse(cmd.Context(), args[0], nil)
			if err := g.check(got, err, got != nil && got.JSON200 != nil); err != nil {
				return err
			}
			t := *got.JSON200
			if cmd.Flags().Changed("max-connections") || cmd.Flags().Changed("temp-file-limit-mb") {
				body := api.TenantUpdate{Limits: t.Limits}
				if cmd.Flags().Changed("max-connections") {
					body.Limits.Connections = limits.Connections
				}
				if cmd.Flags().Changed("temp-file-limit-mb") {
					body.Limits.TempFileMB = limits.TempFileMB
				}
				resp, err := c.UpdateTenantWithResponse(cmd.Context(), args[0], body)
				if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
					return err
				}
				t = *resp.JSON200
			}
			if g.output == "json" {
				return g.printJSON(t.Limits)
			}
			show := func(n int, unit string) string {
				if n == -1 {
					return "none"
				}
				return strconv.Itoa(n) + unit
			}
			return g.printTable([]string{"ID", "MAX CONNECTIONS", "TEMP FILE LIMIT"},
				[][]string{{t.Id, show(t.Limits.Connections, ""), show(t.Limits.TempFileMB, " MiB")}})
		},
	}
	addLimitFlags(cmd, &limits)
	return cmd
}

func newTenantListCmd(g *globals) *cobra.Command {
	var shard, state, region string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List tenants, deleted and purged ones included",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var all []api.Tenant
			var cursor *string
			for {
				p := &api.ListTenantsParams{Cursor: cursor, Shard: optional(shard), Region: optional(region)}
				if state != "" {
					p.State = (*api.TenantState)(&state)
				}
				resp, err := c.ListTenantsWithResponse(cmd.Context(), p)
				if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
					return err
				}
				all = append(all, resp.JSON200.Items...)
				if cursor = resp.JSON200.NextCursor; cursor == nil {
					break
				}
			}
			return g.printTenants(all, true)
		},
	}
	cmd.Flags().StringVar(&shard, "shard", "", "only tenants on this shard")
	cmd.Flags().StringVar(&state, "state", "", "only tenants in this state: provisioning, active, suspended, deleted or purged")
	cmd.Flags().StringVar(&region, "region", "", "only tenants in this region")
	return cmd
}

func newTenantGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show one tenant",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			resp, err := c.GetTenantWithResponse(cmd.Context(), args[0], nil)
			if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
				return err
			}
			return g.printTenants([]api.Tenant{*resp.JSON200}, false)
		},
	}
}

func newTenantStateCmd(g *globals, verb, short string) *cobra.Command {
	var w waitFlags
	cmd := &cobra.Command{
		Use:   verb + " ID",
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
			var status int
			var body []byte
			var tenant *api.Tenant
			var op *api.Operation
			switch verb {
			case "suspend":
				resp, err := c.SuspendTenantWithResponse(cmd.Context(), args[0], &api.SuspendTenantParams{Wait: g.apiWait(w)})
				if err != nil {
					return g.requestError(err)
				}
				status, body, tenant, op = resp.StatusCode(), resp.Body, resp.JSON200, resp.JSON202
			case "resume":
				resp, err := c.ResumeTenantWithResponse(cmd.Context(), args[0], &api.ResumeTenantParams{Wait: g.apiWait(w)})
				if err != nil {
					return g.requestError(err)
				}
				status, body, tenant, op = resp.StatusCode(), resp.Body, resp.JSON200, resp.JSON202
			}
			_, err = g.outcome(cmd.Context(), c, w, status, body, tenant, op)
			return err
		},
	}
	addWaitFlags(cmd, &w, true, "the tenant is "+verb[:len(verb)-1]+"ed")
	return cmd
}

func newTenantMoveCmd(g *globals) *cobra.Command {
	var to string
	var w waitFlags
	cmd := &cobra.Command{
		Use:   "move ID --to SHARD",
		Short: "Move a live tenant to another shard of its region",
		Long: "Move a tenant to another active shard of its region while it keeps serving: its\n" +
			"database is copied by logical replication, then a short cutover holds its requests, lets\n" +
			"the new shard catch up, checks the copy, and switches (`silo operation get` shows the\n" +
			"pause). A failure before the switch leaves the tenant where it was. The command returns\n" +
			"once the move has started; with --wait it follows the move to its end.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := w.validate(cmd); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			resp, err := c.MoveTenantWithResponse(cmd.Context(), args[0], &api.MoveTenantParams{Wait: g.apiWait(w)}, api.TenantMove{Shard: to})
			if err != nil {
				return g.requestError(err)
			}
			_, err = g.outcome(cmd.Context(), c, w, resp.StatusCode(), resp.Body, resp.JSON200, resp.JSON202)
			return err
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the shard to move to")
	_ = cmd.MarkFlagRequired("to")
	addWaitFlags(cmd, &w, false, "the move has ended")
	return cmd
}

func newTenantDeleteCmd(g *globals) *cobra.Command {
	var purge, yes bool
	var w waitFlags
	cmd := &cobra.Command{
		Use:   "delete ID [--purge --yes]",
		Short: "Delete a tenant: softly, or for good with --purge",
		Long: "Delete a tenant. By default a soft delete: its role can no longer log in and its\n" +
			"database is kept for the grace period, then dropped. --purge drops the database and\n" +
			"role now, irreversibly, and needs --yes.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case purge && !yes:
				return usageErrorf("--purge drops the database of tenant %q irreversibly: add --yes to confirm", args[0])
			case yes && !purge:
				// Meant as "for good", it would have been a soft delete.
				return usageErrorf("--yes confirms --purge, which is missing: a delete without --purge is soft (the database is kept for the grace period) and needs no --yes")
			}
			if err := w.validate(cmd); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			params := &api.DeleteTenantParams{Wait: g.apiWait(w)}
			if purge {
				params.Purge = &purge
			}
			resp, err := c.DeleteTenantWithResponse(cmd.Context(), args[0], params)
			if err != nil {
				return g.requestError(err)
			}
			t, err := g.outcome(cmd.Context(), c, w, resp.StatusCode(), resp.Body, resp.JSON200, resp.JSON202)
			if err != nil {
				return err
			}
			if t != nil && t.PurgeAfter != nil && !purge {
				fmt.Fprintf(g.stderr, "Tenant %s is deleted; its database is kept until %s, then purged.\n",
					t.Id, t.PurgeAfter.Local().Format(time.DateTime))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "drop the database and role now, irreversibly")
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm --purge")
	addWaitFlags(cmd, &w, true, "the tenant is deleted")
	return cmd
}

func newTenantExportCmd(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "export ID -f FILE",
		Short: "Download a pg_dump archive of a tenant's database",
		Long: "Download a pg_dump custom-format archive of the tenant's database into FILE, or to\n" +
			"standard output with -f -. The archive has no owners or grants: a plain\n" +
			"pg_restore -d DB FILE restores it into any empty database. It is written to\n" +
			"FILE.tmp and renamed when complete, so a failed export never leaves a partial FILE.\n" +
			"--timeout bounds the wait for the export to start, not the download.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case file == "":
				return usageErrorf("-f FILE is required (-f - writes to standard output)")
			case file == "-" && g.output == "json":
				return usageErrorf("-o json needs -f FILE: with -f -, standard output is the archive")
			}
			return g.exportTenant(cmd.Context(), args[0], file)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "file to write the archive to, - for standard output")
	return cmd
}

func (g *globals) exportTenant(ctx context.Context, id, file string) error {
	c, err := g.streamClient()
	if err != nil {
		return err
	}
	resp, err := c.ExportTenant(ctx, id)
	if err != nil {
		return g.requestError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return apiError(resp.StatusCode, body)
	}
	p := &progress{w: g.stderr, label: "Exporting " + id, start: time.Now()}
	if file == "-" {
		n, err := io.Copy(io.MultiWriter(g.stdout, p), resp.Body)
		p.done()
		if err != nil {
			return fmt.Errorf("export of tenant %s broke off after %s: %v", id, size(n), err)
		}
		fmt.Fprintf(g.stderr, "Exported tenant %s: %s\n", id, size(n))
		return nil
	}
	tmp := file + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600) // tenant data
	if err != nil {
		return err
	}
	n, err := io.Copy(io.MultiWriter(f, p), resp.Body)
	p.done()
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, file)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("export of tenant %s broke off after %s, and %s was not written: %v", id, size(n), file, err)
	}
	if g.output == "json" {
		return g.printJSON(map[string]any{"tenant": id, "file": file, "bytes": n})
	}
	fmt.Fprintf(g.stderr, "Exported tenant %s to %s: %s\n", id, file, size(n))
	return nil
}

func newTenantImportCmd(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "import ID -f FILE",
		Short: "Restore a tenant's pg_dump archive into a tenant's database",
		Long: "Restore FILE (or standard input with -f -), an archive that `silo tenant export`\n" +
			"wrote, into the database of tenant ID, as the tenant's own role: its objects of the\n" +
			"same names are replaced, in one transaction, so a failure changes nothing. The archive\n" +
			"must not be at a newer schema version than the tenant; the tenant takes the archive's\n" +
			"version, and `silo migrate up` brings it up to the fleet's. --timeout bounds the wait\n" +
			"for the server's answer once the archive is sent, not the upload.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return usageErrorf("-f FILE is required (-f - reads standard input)")
			}
			var in io.Reader = cmd.InOrStdin()
			if file != "-" {
				f, err := os.Open(file)
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			c, err := g.streamClient()
			if err != nil {
				return err
			}
			resp, err := c.ImportTenantWithBody(cmd.Context(), args[0], "application/octet-stream", in)
			if err != nil {
				return g.requestError(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK {
				return apiError(resp.StatusCode, body)
			}
			var t api.Tenant
			if err := json.Unmarshal(body, &t); err != nil {
				return fmt.Errorf("the API answered what is not a tenant: %v", err)
			}
			return g.printTenants([]api.Tenant{t}, false)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the archive, - for standard input")
	return cmd
}

// streamClient is a client of the API for downloads: --timeout bounds the
// wait for the response to start, not the transfer of its body.
func (g *globals) streamClient() (*api.Client, error) {
	if g.token == "" {
		return nil, fmt.Errorf("no admin token: pass --token or set SILO_TOKEN (silo dev writes it to .silo/env)")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = g.timeout
	return api.NewClient(strings.TrimRight(g.url, "/"),
		api.WithHTTPClient(&http.Client{Transport: tr}),
		api.WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
			req.Header.Set("Authorization", "Bearer "+g.token)
			req.Header.Set("User-Agent", "silo-cli/"+version)
			return nil
		}))
}

// progress shows the bytes received on stderr, only on a terminal, and no
// more than twice a second.
type progress struct {
	w     io.Writer
	label string
	start time.Time
	last  time.Time
	n     int64
	shown bool
}

func (p *progress) Write(b []byte) (int, error) {
	p.n += int64(len(b))
	if now := time.Now(); now.Sub(p.start) > time.Second && now.Sub(p.last) > 500*time.Millisecond && isTerminal(p.w) {
		p.last, p.shown = now, true
		fmt.Fprintf(p.w, "\r%s: %s ", p.label, size(p.n))
	}
	return len(b), nil
}

func (p *progress) done() {
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// size formats a byte count for people.
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// outcome prints what a lifecycle request answered: the tenant when its
// operation finished within the request; else, the operation, followed to
// its end with --wait (see finishOperation); else the API's problem. It
// returns the tenant as printed, if it was.
func (g *globals) outcome(ctx context.Context, c *api.ClientWithResponses, w waitFlags, status int, body []byte, tenant *api.Tenant, op *api.Operation) (*api.Tenant, error) {
	switch {
	case tenant != nil:
		return tenant, g.printTenants([]api.Tenant{*tenant}, false)
	case op != nil:
		return g.finishOperation(ctx, c, w, *op)
	}
	err := apiError(status, body)
	if p := problemOf(body); p != nil && p.OperationId != nil {
		err = fmt.Errorf("%v; see silo operation get %s", err, *p.OperationId)
	}
	return nil, err
}

// printTenants prints tenants as a table, or as JSON: an array for lists
// and the object itself for single tenants.
func (g *globals) printTenants(tenants []api.Tenant, list bool) error {
	if g.output == "json" {
		if list {
			if tenants == nil {
				tenants = []api.Tenant{}
			}
			return g.printJSON(tenants)
		}
		return g.printJSON(tenants[0])
	}
	rows := make([][]string, 0, len(tenants))
	for _, t := range tenants {
		rows = append(rows, []string{t.Id, t.Shard, t.Database, string(t.State), t.Region,
			strconv.FormatInt(t.SchemaVersion, 10), t.CreatedAt.Local().Format(time.DateTime)})
	}
	return g.printTable([]string{"ID", "SHARD", "DATABASE", "STATE", "REGION", "SCHEMA", "CREATED"}, rows)
}

// printOperation prints an operation and its steps as two tables, or as JSON.
func (g *globals) printOperation(op api.Operation) error {
	if g.output == "json" {
		return g.printJSON(op)
	}
	errText := deref(op.Error)
	if op.ErrorCode != nil {
		errText += " (" + *op.ErrorCode + ")"
	}
	err := g.printTable([]string{"ID", "KIND", "TENANT", "STATE", "UPDATED", "ERROR"},
		[][]string{{op.Id, string(op.Kind), op.TenantId, string(op.State), op.UpdatedAt.Local().Format(time.DateTime), errText}})
	if err != nil {
		return err
	}
	if m := op.Move; m != nil && m.Path != nil {
		fmt.Fprintf(g.stdout, "\nPath:   %s: %s\n", *m.Path, deref(m.PathReason))
		if m.PauseMs != nil {
			fmt.Fprintf(g.stdout, "Pause:  %d ms\n", *m.PauseMs)
		}
	}
	if len(op.Steps) == 0 {
		return nil
	}
	fmt.Fprintln(g.stdout)
	rows := make([][]string, 0, len(op.Steps))
	for _, st := range op.Steps {
		finished := ""
		if st.FinishedAt != nil {
			finished = st.FinishedAt.Local().Format(time.DateTime)
		}
		rows = append(rows, []string{st.Name, string(st.State), strconv.Itoa(st.Attempts),
			st.StartedAt.Local().Format(time.DateTime), finished, deref(st.Error)})
	}
	return g.printTable([]string{"STEP", "STATE", "ATTEMPTS", "STARTED", "FINISHED", "ERROR"}, rows)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// problemOf parses a problem response, or returns nil.
func problemOf(body []byte) *api.Problem {
	var p api.Problem
	if json.Unmarshal(body, &p) != nil || p.Code == "" {
		return nil
	}
	return &p
}
