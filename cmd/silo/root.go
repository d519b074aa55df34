package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/silo-db/silo/api"
)

// globals are the flags every client command shares.
type globals struct {
	stdout, stderr io.Writer
	url            string
	token          string
	output         string
	timeout        time.Duration
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "silo",
		Short:         "Silo: a database-per-tenant control plane for PostgreSQL",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd); err != nil {
				return withExit(exitUsage, err)
			}
			if g.output != "table" && g.output != "json" {
				return usageErrorf("--output %q must be table or json", g.output)
			}
			return nil
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.url, "url", "http://127.0.0.1:8080", "Silo API base URL")
	pf.StringVar(&g.token, "token", "", "admin token")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	pf.DurationVar(&g.timeout, "timeout", time.Minute, "how long a client command waits for the API")
	envNames(root, map[string]string{"url": "SILO_URL", "token": "SILO_TOKEN", "timeout": "SILO_CLIENT_TIMEOUT"})

	tenant := newTenantCmd(g)
	tenant.AddCommand(newTenantKeyCmd(g))
	root.AddCommand(
		newServeCmd(g),
		newDevCmd(g),
		newShardCmd(g),
		tenant,
		newQueryCmd(g),
		newOperationCmd(g),
		newRebalanceCmd(g),
		newMigrateCmd(g),
		newCheckCmd(g),
		newAuditCmd(g),
		newSecretsCmd(g),
		newBenchCmd(g),
		newVersionCmd(g),
		newPGBinDirCmd(g),
	)
	strictUsage(root)
	return root
}

// deprecatedAlias registers old, a former name of flag new (bound to the
// same value), which still works for a release and says what replaced it.
func deprecatedAlias(cmd *cobra.Command, old, new string) {
	f := cmd.Flags().Lookup(new)
	if f == nil {
		panic("deprecatedAlias: no flag " + new)
	}
	cmd.Flags().AddFlag(&pflag.Flag{Name: old, Usage: f.Usage, Value: f.Value, DefValue: f.DefValue, NoOptDefVal: f.NoOptDefVal})
	_ = cmd.Flags().MarkDeprecated(old, "use --"+new)
	if f.Annotations == nil {
		f.Annotations = map[string][]string{}
	}
	f.Annotations["aliases"] = append(f.Annotations["aliases"], old)
}

// envNames records which environment variable feeds each flag; applyEnv
// reads them for flags not given on the command line.
func envNames(cmd *cobra.Command, names map[string]string) {
	for flag, env := range names {
		f := cmd.Flags().Lookup(flag)
		if f == nil {
			f = cmd.PersistentFlags().Lookup(flag)
		}
		if f == nil {
			panic("envNames: no flag " + flag)
		}
		if f.Annotations == nil {
			f.Annotations = map[string][]string{}
		}
		f.Annotations["env"] = []string{env}
		f.Usage += " (env " + env + ")"
	}
}

// applyEnv sets every flag that was not given from its environment variable,
// so each setting has one default, one flag and one variable.
func applyEnv(cmd *cobra.Command) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		env := f.Annotations["env"]
		if err != nil || len(env) == 0 || f.Changed {
			return
		}
		for _, alias := range f.Annotations["aliases"] {
			if cmd.Flags().Changed(alias) {
				return // given under its former name
			}
		}
		if v, ok := os.LookupEnv(env[0]); ok {
			if serr := f.Value.Set(v); serr != nil {
				err = fmt.Errorf("%s=%q: %v", env[0], v, serr)
			}
		}
	})
	return err
}

// client returns a client of the API with the admin token.
func (g *globals) client() (*api.ClientWithResponses, error) {
	if g.token == "" {
		return nil, fmt.Errorf("no admin token: pass --token or set SILO_TOKEN (silo dev writes it to .silo/env)")
	}
	return api.NewClientWithResponses(strings.TrimRight(g.url, "/"),
		api.WithHTTPClient(&http.Client{Timeout: g.timeout}),
		api.WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
			req.Header.Set("Authorization", "Bearer "+g.token)
			req.Header.Set("User-Agent", "silo-cli/"+version)
			return nil
		}))
}

// apiResponse is what every generated response has.
type apiResponse interface {
	StatusCode() int
	GetBody() []byte
}

// check turns a request's outcome into one line: the request's own failure,
// or the API's problem when the expected answer is missing (ok false).
func (g *globals) check(resp apiResponse, err error, ok bool) error {
	if err != nil {
		return g.requestError(err)
	}
	if !ok {
		return apiError(resp.StatusCode(), resp.GetBody())
	}
	return nil
}

// apiError turns a non-success response into one line: the problem's detail
// and code, or the status when the body is no problem.
func apiError(status int, body []byte) error {
	var p api.Problem
	if json.Unmarshal(body, &p) == nil && p.Code != "" {
		detail := p.Title
		if p.Detail != nil {
			detail = *p.Detail
		}
		return fmt.Errorf("%s (%s)", detail, p.Code)
	}
	return fmt.Errorf("the API answered %d %s", status, http.StatusText(status))
}

// requestError explains a failed request, naming the URL when nothing answers.
func (g *globals) requestError(err error) error {
	return fmt.Errorf("cannot reach the Silo API at %s: %v (is `silo serve` or `silo dev` running? set --url or SILO_URL)", g.url, err)
}

// printJSON writes v as indented JSON.
func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printTable writes a header and rows, aligned.
func (g *globals) printTable(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = oneLine(c) // a line break would break the table
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// oneLine folds an error message onto one line for the terminal.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
