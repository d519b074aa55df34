package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/api"
)

// One model of waiting on every command that starts an operation: --wait
// follows it to its end (a move included, however long it takes),
// --wait=false returns once it has started, --wait-timeout ends the wait
// and not the operation (exit status 4), and a drain is waited for until
// no tenant of the shard is active or moving.
func TestDevWaitModel(t *testing.T) {
	t.Parallel()
	_, stop, silo := startDevCLI(t)
	tenant := func(s string) api.Tenant { t.Helper(); return fromJSON[api.Tenant](t, s) }
	operation := func(s string) api.Operation { t.Helper(); return fromJSON[api.Operation](t, s) }

	// Create waits by default; the answer is the tenant, active.
	got, _, err := silo("tenant", "create", "acme", "--shard", "shard-1", "-o", "json")
	require.NoError(t, err)
	require.Equal(t, "active", string(tenant(got).State))
	_, _, err = silo("query", "acme", "CREATE TABLE memos (id int PRIMARY KEY, body text)")
	require.NoError(t, err)
	_, _, err = silo("query", "acme", "INSERT INTO memos SELECT g, 'm' || g FROM generate_series(1, 100) g")
	require.NoError(t, err)

	// A move with --wait is followed to its end, past the API's own wait:
	// the answer is the tenant on its new shard.
	got, stderr, err := silo("tenant", "move", "acme", "--to", "shard-2", "--wait", "-o", "json")
	require.NoError(t, err, stderr)
	moved := tenant(got)
	require.Equal(t, "shard-2", moved.Shard)
	require.Equal(t, "active", string(moved.State))
	got, _, err = silo("query", "acme", "SELECT count(*) FROM memos", "-o", "json")
	require.NoError(t, err)
	require.Contains(t, got, "100")
	// The move recorded how much it copied, which --wait shows as it goes.
	got, _, err = silo("operation", "list", "--tenant", "acme", "--kind", "move", "-o", "json")
	require.NoError(t, err)
	var moves []api.Operation
	require.NoError(t, json.Unmarshal([]byte(got), &moves), got)
	require.Len(t, moves, 1)
	got, _, err = silo("operation", "get", moves[0].Id, "-o", "json")
	require.NoError(t, err)
	first := operation(got)
	require.NotNil(t, first.Move)
	require.NotNil(t, first.Move.CopiedBytes, got)
	require.GreaterOrEqual(t, *first.Move.CopiedBytes, int64(684), "memos alone are 684 bytes of COPY text")

	// --wait-timeout ends the wait, not the move: exit status 4, and how
	// to follow it; the move then ends on its own.
	_, _, err = silo("tenant", "move", "acme", "--to", "shard-1", "--wait", "--wait-timeout", "1ms", "-o", "json")
	require.Equal(t, exitStillRunning, exitCode(err), "%v", err)
	require.Regexp(t, `^--wait-timeout passed; the move of tenant acme goes on in the background: follow it with silo operation get [0-9a-f-]{36}$`, err.Error())
	id := strings.TrimPrefix(err.Error()[strings.LastIndex(err.Error(), " "):], " ")
	deadline := time.Now().Add(60 * time.Second)
	op := api.Operation{State: api.OperationStateRunning}
	for op.State == api.OperationStateRunning && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		got, _, err = silo("operation", "get", id, "-o", "json")
		require.NoError(t, err)
		op = operation(got)
	}
	require.Equal(t, api.OperationStateSucceeded, op.State, got)

	// --wait=false returns once the move has started: the operation, and
	// how to follow it.
	got, stderr, err = silo("tenant", "move", "acme", "--to", "shard-2", "--wait=false", "-o", "json")
	require.NoError(t, err)
	op = operation(got)
	require.Equal(t, api.Move, op.Kind)
	require.Contains(t, stderr, "silo operation get "+op.Id)

	// A drain waits while the tenant is still moving (it counted only
	// active tenants, and returned mid-move): here acme is moving to
	// shard-2, and the drain of shard-1, where a second tenant lives, is
	// over only when neither is left there.
	_, _, err = silo("tenant", "create", "globex", "--shard", "shard-1")
	require.NoError(t, err)
	_, stderr, err = silo("shard", "drain", "shard-1", "--wait")
	require.NoError(t, err, stderr)
	require.Contains(t, stderr, "shard shard-1: 0 tenants left to move")
	for _, id := range []string{"acme", "globex"} {
		got, _, err = silo("tenant", "get", id, "-o", "json")
		require.NoError(t, err)
		tn := tenant(got)
		require.Equal(t, "shard-2", tn.Shard, id)
		require.Equal(t, "active", string(tn.State), id)
	}
	require.NoError(t, stop())
}

// Every mistake in a command line is exit status 2 and one line, sent
// nowhere: unknown commands included, which printed help and exited 0.
func TestUsageExitStatus(t *testing.T) {
	ctx := context.Background()
	t.Setenv("SILO_TOKEN", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"tenant", "frob"}, `unknown command "frob" for "silo tenant"`},
		{[]string{"frob"}, `unknown command "frob" for "silo"`},
		{[]string{"migrate", "frob", "x"}, `unknown command "frob" for "silo migrate"`},
		{[]string{"tenant", "get"}, "accepts 1 arg(s), received 0"},
		{[]string{"tenant", "create", "x", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"tenant", "move", "x"}, `required flag(s) "to" not set`},
		{[]string{"tenant", "list", "-o", "yaml"}, `--output "yaml" must be table or json`},
		{[]string{"tenant", "delete", "acme", "--purge", "--token", "t"}, `--purge drops the database of tenant "acme" irreversibly: add --yes to confirm`},
		{[]string{"tenant", "delete", "acme", "--yes", "--token", "t"}, "--yes confirms --purge, which is missing"},
		{[]string{"tenant", "export", "acme", "--token", "t"}, "-f FILE is required"},
		{[]string{"tenant", "export", "acme", "-f", "-", "-o", "json", "--token", "t"}, "-o json needs -f FILE"},
		{[]string{"tenant", "create", "acme", "--wait-timeout", "-1s", "--token", "t"}, "--wait-timeout -1s must not be negative"},
		{[]string{"tenant", "suspend", "acme", "--wait=false", "--wait-timeout", "5s", "--token", "t"}, "--wait-timeout needs --wait"},
		{[]string{"migrate", "up", "--wait=false", "--wait-timeout", "5s", "--token", "t"}, "--wait-timeout needs --wait"},
		{[]string{"migrate", "create", "x"}, "no migration directory: pass --tenant-migrations"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := runSilo(t, ctx, "", tc.args...)
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "\n")
			require.Equal(t, exitUsage, exitCode(err), "%v", err)
		})
	}
	// A parent command alone shows its help: not a mistake.
	got, err := runSilo(t, ctx, "", "tenant")
	require.NoError(t, err)
	require.Contains(t, got, "Available Commands:")
	// A request that fails is status 1, not 2.
	_, err = runSilo(t, ctx, "", "tenant", "get", "x", "--token", "t", "--url", "http://127.0.0.1:1")
	require.ErrorContains(t, err, "cannot reach the Silo API")
	require.Equal(t, exitFailed, exitCode(err))
}
