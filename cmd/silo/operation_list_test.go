package main

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/api"
)

func TestOperationList(t *testing.T) {
	t.Parallel()
	url := dataServer(t, 0)
	ctx := context.Background()
	silo := func(args ...string) (string, error) {
		t.Helper()
		return runSilo(t, ctx, "", append(args, "--url", url, "--token", dataToken)...)
	}
	ops := func(args ...string) []api.Operation {
		t.Helper()
		got, err := silo(append([]string{"operation", "list", "-o", "json"}, args...)...)
		require.NoError(t, err)
		var list []api.Operation
		require.NoError(t, json.Unmarshal([]byte(got), &list), got)
		return list
	}
	summary := func(list []api.Operation) []string {
		out := []string{}
		for _, op := range list {
			out = append(out, string(op.Kind)+" "+op.TenantId+" "+string(op.State))
		}
		return out
	}

	got, err := silo("operation", "list")
	require.NoError(t, err)
	require.Equal(t, "ID  KIND  TENANT  STATE  CREATED  FINISHED  ERROR\n", got, "no operations yet")
	got, err = silo("operation", "list", "-o", "json")
	require.NoError(t, err)
	require.Equal(t, "[]\n", got)

	for _, args := range [][]string{{"create", "acme", "--shard", "s1"}, {"create", "beta", "--shard", "s2"}, {"suspend", "acme"}} {
		_, err := silo(append([]string{"tenant"}, args...)...)
		require.NoError(t, err)
	}

	// Newest first, one line each.
	got, err = silo("operation", "list")
	require.NoError(t, err)
	const when = `\d{4}-\d\d-\d\d \d\d:\d\d:\d\d`
	require.Regexp(t, `^ID\s+KIND\s+TENANT\s+STATE\s+CREATED\s+FINISHED\s+ERROR\n`+
		`[0-9a-f-]{36}\s+suspend\s+acme\s+succeeded\s+`+when+`\s+`+when+`\s*\n`+
		`[0-9a-f-]{36}\s+create\s+beta\s+succeeded\s+`+when+`\s+`+when+`\s*\n`+
		`[0-9a-f-]{36}\s+create\s+acme\s+succeeded\s+`+when+`\s+`+when+`\s*\n$`, got)

	// JSON is an array of operations, as `operation get` shows each.
	all := ops()
	require.Equal(t, []string{"suspend acme succeeded", "create beta succeeded", "create acme succeeded"}, summary(all))
	got, err = silo("operation", "get", all[0].Id, "-o", "json")
	require.NoError(t, err)
	var one api.Operation
	require.NoError(t, json.Unmarshal([]byte(got), &one))
	require.Equal(t, one, all[0])

	// Filters and the limit.
	require.Equal(t, []string{"suspend acme succeeded", "create acme succeeded"}, summary(ops("--tenant", "acme")))
	require.Equal(t, []string{"create beta succeeded", "create acme succeeded"}, summary(ops("--kind", "create", "--state", "succeeded")))
	require.Equal(t, []string{}, summary(ops("--state", "failed")))
	require.Equal(t, []string{"suspend acme succeeded", "create beta succeeded"}, summary(ops("--limit", "2")))

	// Bad values are one line naming the rule and the code.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--state", "done"}, `state "done" must be running, succeeded or failed (EMALFORMED)`},
		{[]string{"--kind", "frob"}, `(EMALFORMED)`},
		{[]string{"--tenant", "Acme"}, `(EMALFORMED)`},
		{[]string{"--limit", "0"}, "--limit 0 must be at least 1"},
		{[]string{"extra"}, "unknown command"},
	} {
		_, err := silo(append([]string{"operation", "list"}, tc.args...)...)
		require.ErrorContains(t, err, tc.want, "%v", tc.args)
		require.NotContains(t, err.Error(), "\n")
	}
	_, err = runSilo(t, ctx, "", "operation", "list", "--url", url, "--token", "wrong-token-0123456789")
	require.ErrorContains(t, err, "(EUNAUTHORIZED)")
}
