package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
)

func newQueryCmd(g *globals) *cobra.Command {
	var key string
	cmd := &cobra.Command{
		Use:   "query TENANT SQL [ARG...]",
		Short: "Run one SQL statement on a tenant's database, as the tenant's own role",
		Long: "Run one SQL statement on the tenant's database through the data API. Each ARG is bound\n" +
			"to $1, $2, … as text, and PostgreSQL infers its type from the statement (cast where it\n" +
			"cannot: $1::int). SQL - reads the statement from standard input.\n\n" +
			"It sends the tenant key of --key (or SILO_KEY) when given, the admin token otherwise.\n" +
			"The table shows the rows, or how many rows the statement changed; -o json prints the\n" +
			"API's answer as it is. The server caps the rows it returns; a note on standard error\n" +
			"says when the result was cut.",
		Example: "  silo query acme 'SELECT id, title FROM notes WHERE id = $1' 42\n" +
			"  silo query acme \"INSERT INTO notes (title) VALUES ('hello')\"\n" +
			"  silo query acme - < report.sql",
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			sql := args[1]
			if sql == "-" {
				b, err := io.ReadAll(cmd.InOrStdin())
				if err != nil {
					return fmt.Errorf("read the statement from standard input: %v", err)
				}
				sql = string(b)
			}
			c, err := g.dataClient(key)
			if err != nil {
				return err
			}
			body := api.Statement{Sql: sql}
			if len(args) > 2 {
				params := make([]any, 0, len(args)-2)
				for _, a := range args[2:] {
					params = append(params, a)
				}
				body.Params = &params
			}
			resp, err := c.RunQueryWithResponse(cmd.Context(), args[0], body)
			if err != nil {
				return g.requestError(err)
			}
			if resp.JSON200 == nil {
				return dataAPIError(resp.StatusCode(), resp.Body)
			}
			return g.printQueryResult(resp.Body)
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "tenant API key to send instead of the admin token (silo tenant key create makes one)")
	envNames(cmd, map[string]string{"key": "SILO_KEY"})
	return cmd
}

// dataClient is a client of the API that sends the tenant key when there is
// one, and the admin token otherwise.
func (g *globals) dataClient(key string) (*api.ClientWithResponses, error) {
	if key == "" && g.token == "" {
		return nil, fmt.Errorf("no credentials: pass --key (or set SILO_KEY) with a tenant key, or --token (or SILO_TOKEN) with the admin token")
	}
	if key != "" {
		g.token = key // only this command's requests see it
	}
	return g.client()
}

// dataAPIError is apiError with what the data API adds: the SQLSTATE of a
// PostgreSQL error.
func dataAPIError(status int, body []byte) error {
	if p := problemOf(body); p != nil && p.Sqlstate != nil {
		return fmt.Errorf("%s (%s, SQLSTATE %s)", deref(p.Detail), p.Code, *p.Sqlstate)
	}
	return apiError(status, body)
}

// queryResult is api.QueryResult with numbers kept as they were sent.
type queryResult struct {
	Columns      []string `json:"columns"`
	Rows         [][]any  `json:"rows"`
	RowsAffected int64    `json:"rowsAffected"`
	Truncated    bool     `json:"truncated"`
}

// printQueryResult prints a query's answer: the API's JSON indented, or a
// table of the rows, or the count of rows a statement without rows changed.
func (g *globals) printQueryResult(body []byte) error {
	if g.output == "json" {
		var out bytes.Buffer
		if err := json.Indent(&out, body, "", "  "); err != nil {
			return fmt.Errorf("the API answered JSON that does not parse: %v", err)
		}
		out.WriteByte('\n')
		_, err := g.stdout.Write(out.Bytes())
		return err
	}
	var res queryResult
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber() // 12345678901234567 stays itself
	if err := dec.Decode(&res); err != nil {
		return fmt.Errorf("the API answered JSON that does not parse: %v", err)
	}
	if len(res.Columns) == 0 {
		_, err := fmt.Fprintln(g.stdout, plural(res.RowsAffected, "row")+" affected")
		return err
	}
	rows := make([][]string, 0, len(res.Rows))
	for _, r := range res.Rows {
		cells := make([]string, len(r))
		for i, v := range r {
			cells[i] = cell(v)
		}
		rows = append(rows, cells)
	}
	if err := g.printTable(res.Columns, rows); err != nil {
		return err
	}
	if res.Truncated {
		fmt.Fprintf(g.stderr, "(truncated) %s shown of %d: the server caps the rows and bytes of a result\n",
			plural(int64(len(res.Rows)), "row"), res.RowsAffected)
	}
	return nil
}

// cell formats a value for a table: NULL for null, JSON for arrays and
// objects, the value itself otherwise.
func cell(v any) string {
	switch v := v.(type) {
	case nil:
		return "NULL"
	case string:
		return v
	case json.Number:
		return v.String()
	case bool:
		return strconv.FormatBool(v)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func plural(n int64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
