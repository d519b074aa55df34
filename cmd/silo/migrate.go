package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/migrations"
)

func newMigrateCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Migrate every tenant's schema: runs across the fleet, status and drift",
		Long: "Change the schema of every tenant database with the goose SQL files of\n" +
			"--tenant-migrations (SILO_TENANT_MIGRATIONS). `silo migrate create` writes a new file;\n" +
			"`silo migrate up` tries the files on a copy of a shard's template, then migrates the\n" +
			"shard templates (and so new tenants), a canary wave, and every other tenant, in the\n" +
			"background. `silo migrate status` follows a run, and `silo migrate drift` finds tenants\n" +
			"whose schema differs from their shard's template.",
	}
	cmd.AddCommand(
		newMigrateRunCmd(g, "up"),
		newMigrateRunCmd(g, "down"),
		newMigrateStatusCmd(g),
		newMigrateDriftCmd(g),
		newMigrateCreateCmd(g),
		newMigrateRunsCmd(g),
		newMigrateStopCmd(g),
	)
	return cmd
}

// newMigrateRunCmd returns `migrate up` or `migrate down`: they differ in
// direction and in whether --to is required.
func newMigrateRunCmd(g *globals, direction string) *cobra.Command {
	var to int64
	var concurrency, perShard, canary int
	var continueOnError bool
	var w waitFlags
	cmd := &cobra.Command{Args: cobra.NoArgs}
	switch direction {
	case "up":
		cmd.Use = "up [--to VERSION] [--wait]"
		cmd.Short = "Start a run that migrates every tenant up to the latest (or --to) version"
		cmd.Long = "Start a migration run that brings every active and suspended tenant up to the latest\n" +
			"version of the tenant migration files, or to --to. The server first checks the files\n" +
			"and tries them on a copy of a shard's template: a file that is malformed or fails there\n" +
			"is refused before any tenant is touched. Then the run goes on in the background: the\n" +
			"shard templates first, a canary wave of --canary tenants (by default one per shard), and\n" +
			"every other tenant, --concurrency at once (--per-shard on one shard). By default the run\n" +
			"stops at the first failed tenant; --continue-on-error goes on past failures after the\n" +
			"canary wave. Only one run is in progress at a time.\n\n" +
			"Without --wait the command prints the run and returns; `silo migrate status` follows it.\n" +
			"With --wait it shows the run's progress until it ends, and fails when the run failed or\n" +
			"was stopped. Ctrl-C stops the waiting, not the run: `silo migrate stop` does that."
	case "down":
		cmd.Use = "down --to VERSION [--wait]"
		cmd.Short = "Start a run that migrates every tenant down to version --to"
		cmd.Long = "Start a migration run that undoes migrations on every active and suspended tenant\n" +
			"above version --to, with the down sections of the tenant migration files: each file\n" +
			"above --to must have one. The run goes on in the background, as `silo migrate up`\n" +
			"describes: templates first, a canary wave, then the other tenants.\n\n" +
			"Without --wait the command prints the run and returns; `silo migrate status` follows it.\n" +
			"With --wait it shows the run's progress until it ends, and fails when the run failed or\n" +
			"was stopped. Ctrl-C stops the waiting, not the run: `silo migrate stop` does that."
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := w.validate(cmd); err != nil {
			return err
		}
		c, err := g.client()
		if err != nil {
			return err
		}
		dir := api.MigrationRunCreateDirection(direction)
		body := api.MigrationRunCreate{Direction: &dir}
		f := cmd.Flags()
		if f.Changed("to") {
			body.To = &to
		}
		if f.Changed("concurrency") {
			body.Concurrency = &concurrency
		}
		if f.Changed("per-shard") {
			body.PerShard = &perShard
		}
		if f.Changed("canary") {
			body.Canary = &canary
		}
		if f.Changed("continue-on-error") {
			body.ContinueOnError = &continueOnError
		}
		resp, err := c.StartMigrationRunWithResponse(cmd.Context(), body)
		if err := g.checkLine(resp, err, resp != nil && resp.JSON202 != nil); err != nil {
			return err
		}
		run := *resp.JSON202
		if !w.wait {
			if err := g.printRun(run); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "Migration run %s goes on in the background; follow it with: silo migrate status\n", run.Id)
			return nil
		}
		wctx, cancel := w.context(cmd.Context())
		defer cancel()
		run, err = g.waitRun(wctx, c, run)
		if err != nil {
			return err
		}
		if err := g.printRun(run); err != nil {
			return err
		}
		return runOutcome(run)
	}
	f := cmd.Flags()
	f.Int64Var(&to, "to", 0, "the target version (default for up: the latest file's)")
	f.IntVar(&concurrency, "concurrency", migrations.DefaultConcurrency, "tenants migrated at once, fleet-wide")
	f.IntVar(&perShard, "per-shard", migrations.DefaultPerShard, "tenants migrated at once on one shard")
	f.IntVar(&canary, "canary", 0, "tenants, spread over shards, migrated first; if one fails the run stops before the rest (default: one per shard; 0 for none)")
	f.BoolVar(&continueOnError, "continue-on-error", false, "go on past failed tenants after the canary wave (default: stop at the first failure)")
	addWaitFlags(cmd, &w, false, "the run has ended (failing if it did not succeed)")
	if direction == "down" {
		_ = cmd.MarkFlagRequired("to")
	}
	return cmd
}

// runActive reports whether a run is still in progress.
func runActive(s api.MigrationRunState) bool {
	return s == "preparing" || s == "canary" || s == "running"
}

// runOutcome is the command's error for a run that ended without success:
// exit status 3 when it went through every tenant and some failed (the
// others are done), 1 when it failed or was stopped before that (a
// canary that failed, stop at the first failure, migrate stop).
func runOutcome(run api.MigrationRun) error {
	pr := run.Progress
	if run.State != "failed" && run.State != "stopped" {
		if pr.Failed > 0 {
			return withExit(exitPartial, fmt.Errorf("migration run %s finished with %d of %d tenants failed: silo migrate status lists them",
				run.Id, pr.Failed, pr.Total))
		}
		return nil
	}
	why := deref(run.Error)
	if why == "" {
		why = "no reason given"
	}
	err := fmt.Errorf("migration run %s %s: %s", run.Id, run.State, oneLine(why))
	if run.State == "failed" && pr.Pending == 0 && pr.Running == 0 && pr.Done > 0 && pr.Failed > 0 {
		return withExit(exitPartial, err)
	}
	return err
}

// waitRun polls a run every 500ms until it is no longer in progress,
// showing its progress on stderr, and returns it as it ended. It keeps
// polling through failed requests for up to --timeout, so that a restarting
// server does not end the wait; ctx ends the wait, never the run.
func (g *globals) waitRun(ctx context.Context, c *api.ClientWithResponses, run api.MigrationRun) (api.MigrationRun, error) {
	id := run.Id.String()
	p := &runProgress{w: g.stderr, tty: isTerminal(g.stderr)}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var failingSince time.Time
	for runActive(run.State) {
		p.show(run)
		select {
		case <-ctx.Done():
			p.end()
			return run, stillRunning(ctx, "migration run "+id, "silo migrate status, or stop it with silo migrate stop "+id)
		case <-tick.C:
		}
		resp, err := c.GetMigrationRunWithResponse(ctx, id)
		if ctx.Err() != nil {
			continue // the select above says so
		}
		if err := g.checkLine(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
			transient := resp == nil || resp.StatusCode() >= 500
			if transient && failingSince.IsZero() {
				failingSince = time.Now()
			}
			if transient && time.Since(failingSince) < g.timeout {
				continue
			}
			p.end()
			return run, fmt.Errorf("%v; migration run %s may still be going on: follow it with silo migrate status", err, id)
		}
		failingSince = time.Time{}
		run = *resp.JSON200
	}
	p.show(run)
	p.end()
	return run, nil
}

// runProgress draws a run's progress on stderr: a bar rewritten in place on
// a terminal, else a line at most every 5 seconds.
type runProgress struct {
	w     io.Writer
	tty   bool
	last  time.Time
	shown bool
}

func (p *runProgress) show(run api.MigrationRun) {
	pr := run.Progress
	finished := pr.Done + pr.Failed + pr.Skipped
	var b strings.Builder
	if run.State != "running" || !p.tty {
		b.WriteString(string(run.State) + " ")
	}
	if p.tty {
		const width = 20
		filled := 0
		if pr.Total > 0 {
			filled = min(width, finished*width/pr.Total)
		}
		b.WriteString("[" + strings.Repeat("#", filled) + strings.Repeat("-", width-filled) + "] ")
	}
	fmt.Fprintf(&b, "%d/%d tenants", finished, pr.Total)
	if pr.Failed > 0 {
		fmt.Fprintf(&b, "  %d failed", pr.Failed)
	}
	if run.EtaSeconds != nil {
		b.WriteString("  ETA " + eta(run.EtaSeconds))
	}
	if p.tty {
		fmt.Fprint(p.w, "\r"+b.String()+"\033[K")
		p.shown = true
		return
	}
	if now := time.Now(); !p.shown || now.Sub(p.last) >= 5*time.Second {
		p.last, p.shown = now, true
		fmt.Fprintf(p.w, "migration run %s: %s\n", run.Id, b.String())
	}
}

// end finishes the bar's line, so what follows starts on a line of its own.
func (p *runProgress) end() {
	if p.tty && p.shown {
		fmt.Fprintln(p.w)
		p.shown = false
	}
}

// eta formats the seconds left of a run.
func eta(s *int64) string {
	if s == nil {
		return "-"
	}
	return (time.Duration(*s) * time.Second).String()
}

// checkLine is check with the API's message folded onto one line: a problem
// can list several bad migration files, one per line.
func (g *globals) checkLine(resp apiResponse, err error, ok bool) error {
	if err := g.check(resp, err, ok); err != nil {
		return errors.New(oneLine(err.Error()))
	}
	return nil
}

// printRun prints one run as a short block of its fields, or as JSON.
func (g *globals) printRun(run api.MigrationRun) error {
	if g.output == "json" {
		return g.printJSON(run)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Run:\t%s\n", run.Id)
	fmt.Fprintf(tw, "State:\t%s\n", run.State)
	fmt.Fprintf(tw, "Direction:\t%s to version %d\n", run.Direction, run.TargetVersion)
	pr := run.Progress
	if run.State == "preparing" {
		fmt.Fprintf(tw, "Tenants:\tnot counted yet: the shard templates are migrated first\n")
	} else {
		line := fmt.Sprintf("%d of %d done", pr.Done, pr.Total)
		for _, n := range []struct {
			n    int
			what string
		}{{pr.Running, "running"}, {pr.Pending, "pending"}, {pr.Failed, "failed"}, {pr.Skipped, "skipped"}} {
			if n.n > 0 {
				line += fmt.Sprintf(", %d %s", n.n, n.what)
			}
		}
		fmt.Fprintf(tw, "Tenants:\t%s\n", line)
	}
	if run.EtaSeconds != nil {
		fmt.Fprintf(tw, "ETA:\t%s\n", eta(run.EtaSeconds))
	}
	onError := "stop at the first failure"
	if run.ContinueOnError {
		onError = "continue on error"
	}
	fmt.Fprintf(tw, "Options:\tconcurrency %d, %d per shard, canary %d, %s\n", run.Concurrency, run.PerShard, run.Canary, onError)
	fmt.Fprintf(tw, "Created:\t%s by %s\n", run.CreatedAt.Local().Format(time.DateTime), run.CreatedBy)
	if run.FinishedAt != nil {
		fmt.Fprintf(tw, "Finished:\t%s\n", run.FinishedAt.Local().Format(time.DateTime))
	}
	if run.Error != nil {
		fmt.Fprintf(tw, "Error:\t%s\n", oneLine(*run.Error))
	}
	return tw.Flush()
}

func newMigrateStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the tenants' schema versions per shard, failures, and the current run",
		Long: "Show the latest version among the tenant migration files, the target version (new\n" +
			"tenants are born at it), how many tenants are not at the target yet, how many tenants\n" +
			"each shard has at each version, the tenants whose latest migration failed, and the run\n" +
			"in progress (or else the latest one).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			resp, err := c.GetMigrationStatusWithResponse(cmd.Context())
			if err := g.checkLine(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
				return err
			}
			st := *resp.JSON200
			if g.output == "json" {
				err = g.printJSON(st)
			} else {
				err = g.printStatus(st)
			}
			if err == nil && len(st.Failures) > 0 {
				// As migrate drift exits 1 on drift: a script can tell.
				err = withExit(exitPartial, fmt.Errorf("%s failed a migration (see above)", plural(int64(len(st.Failures)), "tenant")))
			}
			return err
		},
	}
}

func (g *globals) printStatus(st api.MigrationStatus) error {
	fmt.Fprintf(g.stdout, "Latest version:  %d\n", st.LatestVersion)
	fmt.Fprintf(g.stdout, "Target version:  %d\n", st.TargetVersion)
	fmt.Fprintf(g.stdout, "Tenants behind:  %d\n\n", st.Behind)

	if len(st.Shards) == 0 {
		fmt.Fprintln(g.stdout, "No active or suspended tenants.")
	} else {
		var versions []int64
		for _, s := range st.Shards {
			for _, v := range s.Versions {
				if !slices.Contains(versions, v.Version) {
					versions = append(versions, v.Version)
				}
			}
		}
		slices.Sort(versions)
		header := []string{"SHARD"}
		for _, v := range versions {
			header = append(header, "v"+strconv.FormatInt(v, 10))
		}
		rows := make([][]string, 0, len(st.Shards))
		for _, s := range st.Shards {
			row := []string{s.Shard}
			for _, v := range versions {
				n := 0
				for _, sv := range s.Versions {
					if sv.Version == v {
						n = sv.Tenants
					}
				}
				row = append(row, strconv.Itoa(n))
			}
			rows = append(rows, row)
		}
		if err := g.printTable(header, rows); err != nil {
			return err
		}
	}

	if len(st.Failures) > 0 {
		fmt.Fprintf(g.stdout, "\nFailed tenants, not at the target version (%d):\n", len(st.Failures))
		rows := make([][]string, 0, len(st.Failures))
		for _, f := range st.Failures {
			rows = append(rows, []string{f.TenantId, f.Shard, strconv.FormatInt(f.Version, 10), f.Sqlstate, truncateText(oneLine(f.Error), 80)})
		}
		if err := g.printTable([]string{"TENANT", "SHARD", "VERSION", "SQLSTATE", "ERROR"}, rows); err != nil {
			return err
		}
	}

	if r := st.Run; r != nil {
		title := "Latest run:"
		if runActive(r.State) {
			title = "Run in progress:"
		}
		fmt.Fprintf(g.stdout, "\n%s\n", title)
		pr := r.Progress
		return g.printTable([]string{"ID", "STATE", "DIRECTION", "TARGET", "DONE/FAILED/TOTAL", "ETA"},
			[][]string{{r.Id.String(), string(r.State), string(r.Direction), strconv.FormatInt(r.TargetVersion, 10),
				fmt.Sprintf("%d/%d/%d", pr.Done, pr.Failed, pr.Total), eta(r.EtaSeconds)}})
	}
	return nil
}

// truncateText shortens s to n characters, marking the cut.
func truncateText(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

func newMigrateDriftCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "drift",
		Short: "Find tenants whose schema differs from their shard's template",
		Long: "Compare the actual schema (tables, columns, indexes, constraints, triggers) of every\n" +
			"active and suspended tenant with its shard's template, and list the tenants that\n" +
			"differ: changes made by hand, or migrations that did not apply. For each, lines\n" +
			"marked - are in the template but missing from the tenant, and lines marked + are in\n" +
			"the tenant only. A tenant at another version than its template is listed too. Like\n" +
			"diff, the command fails when any tenant differs.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			resp, err := c.GetSchemaDriftWithResponse(cmd.Context())
			if err := g.checkLine(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
				return err
			}
			rep := *resp.JSON200
			if g.output == "json" {
				err = g.printJSON(rep)
			} else {
				err = g.printDrift(rep)
			}
			if err != nil {
				return err
			}
			if n := len(rep.Drifted); n > 0 {
				return withExit(exitPartial, fmt.Errorf("schema drift in %s", plural(int64(n), "tenant")))
			}
			return nil
		},
	}
}

func (g *globals) printDrift(rep api.DriftReport) error {
	differ := "differ from their shard's template"
	if len(rep.Drifted) == 1 {
		differ = "differs from its shard's template"
	}
	fmt.Fprintf(g.stdout, "checked %s: %d %s\n", plural(int64(rep.Checked), "tenant"), len(rep.Drifted), differ)
	for _, t := range rep.Templates {
		if t.Error != nil {
			fmt.Fprintf(g.stdout, "the template of shard %s could not be inspected: %s\n", t.Shard, oneLine(*t.Error))
		}
	}
	for _, d := range rep.Drifted {
		fmt.Fprintf(g.stdout, "\n%s (shard %s, version %d, template %d)\n", d.TenantId, d.Shard, d.Version, d.TemplateVersion)
		if d.Error != nil {
			fmt.Fprintf(g.stdout, "  error: %s\n", oneLine(*d.Error))
		}
		for _, l := range d.Missing {
			fmt.Fprintf(g.stdout, "  - missing: %s\n", l)
		}
		for _, l := range d.Extra {
			fmt.Fprintf(g.stdout, "  + extra: %s\n", l)
		}
	}
	return nil
}

func newMigrateCreateCmd(g *globals) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "create NAME [--dir DIR]",
		Short: "Write a new, empty tenant migration file",
		Long: "Write the skeleton of a new goose SQL migration, NNNNN_NAME.sql, in DIR: its version is\n" +
			"one above the highest there. Write the statements that make the change under\n" +
			"-- +goose Up and those that undo it under -- +goose Down, then run silo migrate up.\n" +
			"DIR is the directory the server reads with --tenant-migrations; it defaults to\n" +
			"SILO_TENANT_MIGRATIONS. NAME is lower case: letters, digits and underscores.\n" +
			"No server is needed.",
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if dir == "" {
				return usageErrorf("no migration directory: pass --tenant-migrations or set SILO_TENANT_MIGRATIONS")
			}
			path, err := migrations.CreateFile(dir, args[0])
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(map[string]string{"path": path})
			}
			_, err = fmt.Fprintln(g.stdout, path)
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "tenant-migrations", "", "directory of the tenant migration files, as silo serve's")
	envNames(cmd, map[string]string{"tenant-migrations": "SILO_TENANT_MIGRATIONS"})
	deprecatedAlias(cmd, "dir", "tenant-migrations")
	return cmd
}

func newMigrateRunsCmd(g *globals) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "runs [--limit N]",
		Short: "List migration runs, newest first",
		Long:  "List the latest migration runs, newest first, with their state and how many tenants\neach migrated, failed, and had to migrate.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			params := &api.ListMigrationRunsParams{}
			if cmd.Flags().Changed("limit") {
				params.Limit = &limit
			}
			resp, err := c.ListMigrationRunsWithResponse(cmd.Context(), params)
			if err := g.checkLine(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
				return err
			}
			runs := resp.JSON200.Items
			if g.output == "json" {
				if runs == nil {
					runs = []api.MigrationRun{}
				}
				return g.printJSON(runs)
			}
			rows := make([][]string, 0, len(runs))
			for _, r := range runs {
				rows = append(rows, []string{r.Id.String(), string(r.State), string(r.Direction), strconv.FormatInt(r.TargetVersion, 10),
					strconv.Itoa(r.Progress.Done), strconv.Itoa(r.Progress.Failed), strconv.Itoa(r.Progress.Total),
					r.CreatedAt.Local().Format(time.DateTime)})
			}
			return g.printTable([]string{"ID", "STATE", "DIRECTION", "TARGET", "DONE", "FAILED", "TOTAL", "CREATED"}, rows)
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 100, "how many runs to show at most (1 to 1000)")
	return cmd
}

func newMigrateStopCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "stop RUN_ID",
		Short: "Stop a migration run in progress",
		Long: "Stop a migration run in progress: the tenants being migrated finish, the others are\n" +
			"skipped and stay at their version. A later `silo migrate up` picks them up.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			resp, err := c.StopMigrationRunWithResponse(cmd.Context(), args[0])
			if err := g.checkLine(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
				return err
			}
			return g.printRun(*resp.JSON200)
		},
	}
}
