package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/pgcluster"
)

// runSiloStderr is runSilo that also returns what the command wrote to
// stderr.
func runSiloStderr(t *testing.T, ctx context.Context, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut syncBuffer
	cmd := newRootCmd(&out, &errOut)
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader(""))
	err = cmd.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// jsonKeys returns the sorted member names of a JSON object.
func jsonKeys(t *testing.T, s string) []string {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(s), &m), s)
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

var tenantKeys = []string{"createdAt", "database", "epoch", "id", "limits", "region", "schemaVersion", "shard", "state", "updatedAt"}

func TestDevTenants(t *testing.T) {
	t.Parallel()
	dir := devDir(t)
	ctx := context.Background()
	var out, errOut syncBuffer
	stop := background(t, &out, &errOut, "dev", "--dir", dir, "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0", "--shards", "2")
	url, token := waitEnv(t, dir, stop)
	silo := func(args ...string) (string, string, error) {
		t.Helper()
		return runSiloStderr(t, ctx, append(args, "--url", url, "--token", token)...)
	}
	tenant := func(s string) api.Tenant {
		t.Helper()
		var tn api.Tenant
		require.NoError(t, json.Unmarshal([]byte(s), &tn), s)
		return tn
	}

	// Create: JSON is the tenant object, with no password anywhere.
	got, _, err := silo("tenant", "create", "acme", "--shard", "shard-1", "-o", "json")
	require.NoError(t, err)
	require.Equal(t, tenantKeys, jsonKeys(t, got))
	require.NotContains(t, strings.ToLower(got), "password")
	acme := tenant(got)
	require.Regexp(t, `^t_[a-z2-7]{20}$`, acme.Database, "a name that says nothing of the tenant")
	require.Equal(t, api.Tenant{
		Id: "acme", Shard: "shard-1", Database: acme.Database, State: "active", Region: "local",
		SchemaVersion: 1, Epoch: acme.Epoch, CreatedAt: acme.CreatedAt, UpdatedAt: acme.UpdatedAt,
		Limits: api.TenantLimits{Connections: 20, TempFileMB: 5120},
	}, acme)

	// The table, and a retry with the same idempotency key answering the
	// first outcome.
	got, _, err = silo("tenant", "create", "beta", "--idempotency-key", "beta-1", "--wait", "--wait-timeout", "30s")
	require.NoError(t, err)
	require.Regexp(t, `^ID\s+SHARD\s+DATABASE\s+STATE\s+REGION\s+SCHEMA\s+CREATED\n`+
		`beta\s+shard-[12]\s+t_[a-z2-7]{20}\s+active\s+local\s+1\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n$`, got)
	again, _, err := silo("tenant", "create", "beta", "--idempotency-key", "beta-1")
	require.NoError(t, err)
	require.Equal(t, got, again)
	_, _, err = silo("tenant", "create", "beta")
	require.ErrorContains(t, err, "(ECONFLICT)")

	// List follows pages and answers an array; filters narrow it.
	got, _, err = silo("tenant", "list", "-o", "json")
	require.NoError(t, err)
	var list []api.Tenant
	require.NoError(t, json.Unmarshal([]byte(got), &list), got)
	require.Len(t, list, 2)
	require.Equal(t, "acme", list[0].Id)
	require.Equal(t, "beta", list[1].Id)
	got, _, err = silo("tenant", "list", "--state", "suspended", "-o", "json")
	require.NoError(t, err)
	require.Equal(t, "[]\n", got)
	got, _, err = silo("tenant", "list", "--shard", "shard-1", "--region", "local")
	require.NoError(t, err)
	require.Regexp(t, `(?m)^acme\s+shard-1\s+`+acme.Database+`\s+active\s`, got)
	got, _, err = silo("tenant", "get", "acme", "-o", "json")
	require.NoError(t, err)
	require.Equal(t, acme, tenant(got))

	// Limits: shown, changed one at a time, bad values refused.
	got, _, err = silo("tenant", "limits", "acme")
	require.NoError(t, err)
	require.Regexp(t, `^ID\s+MAX CONNECTIONS\s+TEMP FILE LIMIT\nacme\s+20\s+5120 MiB\n$`, got)
	got, _, err = silo("tenant", "limits", "acme", "--max-connections", "5")
	require.NoError(t, err)
	require.Regexp(t, `\nacme\s+5\s+5120 MiB\n$`, got)
	_, _, err = silo("tenant", "limits", "acme", "--temp-file-limit-mb", "0")
	require.ErrorContains(t, err, "(EINVALID)")
	got, _, err = silo("tenant", "limits", "acme", "--temp-file-limit-mb", "-1", "-o", "json")
	require.NoError(t, err)
	require.JSONEq(t, `{"connections": 5, "tempFileMB": -1}`, got)
	got, _, err = silo("tenant", "get", "acme", "-o", "json")
	require.NoError(t, err)
	acme = tenant(got)

	// Suspend and resume.
	got, _, err = silo("tenant", "suspend", "acme")
	require.NoError(t, err)
	require.Regexp(t, `(?m)^acme\s+shard-1\s+`+acme.Database+`\s+suspended\s`, got)
	got, _, err = silo("tenant", "list", "--state", "suspended")
	require.NoError(t, err)
	require.Regexp(t, `^ID.*\nacme\s.*\n$`, got)
	got, _, err = silo("tenant", "resume", "acme", "-o", "json")
	require.NoError(t, err)
	require.Equal(t, "active", string(tenant(got).State))

	// Export to a file: complete, restorable, and no FILE.tmp left behind.
	// (The PostgreSQL 16+ packages of the npm registry have no pg_dump.)
	binDir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	if _, serr := os.Stat(filepath.Join(binDir, "pg_restore")); serr == nil {
		file := filepath.Join(t.TempDir(), "acme.dump")
		got, stderr, err := silo("tenant", "export", "acme", "-f", file)
		require.NoError(t, err)
		require.Empty(t, got)
		require.Regexp(t, `^Exported tenant acme to .*acme\.dump: \d+(\.\d)? (bytes|KiB|MiB)\n$`, stderr)
		dump, err := os.ReadFile(file)
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(string(dump), "PGDMP"))
		require.NoFileExists(t, file+".tmp")
		info, err := os.Stat(file)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "an export holds tenant data")
		toc, err := exec.Command(filepath.Join(binDir, "pg_restore"), "--list", file).CombinedOutput()
		require.NoError(t, err, "%s", toc)
		require.Contains(t, string(toc), "TABLE public notes")

		got, _, err = silo("tenant", "export", "acme", "-f", "-")
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(got, "PGDMP"))

		// -o json says what was written (it printed nothing).
		got, _, err = silo("tenant", "export", "acme", "-f", file, "-o", "json")
		require.NoError(t, err)
		var written struct {
			Tenant, File string
			Bytes        int64
		}
		require.NoError(t, json.Unmarshal([]byte(got), &written), got)
		require.Equal(t, "acme", written.Tenant)
		require.Equal(t, file, written.File)
		require.Equal(t, info.Size(), written.Bytes)
	}
	missing := filepath.Join(t.TempDir(), "nope.dump")
	_, _, err = silo("tenant", "export", "nope", "-f", missing)
	require.ErrorContains(t, err, `(ENOTFOUND)`)
	require.NotContains(t, err.Error(), "\n")
	require.NoFileExists(t, missing)
	require.NoFileExists(t, missing+".tmp")

	// --purge needs --yes, and without it nothing happens.
	_, _, err = silo("tenant", "delete", "acme", "--purge")
	require.ErrorContains(t, err, "irreversibly")
	require.ErrorContains(t, err, "--yes")
	got, _, err = silo("tenant", "get", "acme", "-o", "json")
	require.NoError(t, err)
	require.Equal(t, "active", string(tenant(got).State))

	// A soft delete keeps the data for the grace period; a purge drops it.
	got, stderr, err := silo("tenant", "delete", "acme", "-o", "json")
	require.NoError(t, err)
	withDates := append([]string{"deletedAt", "purgeAfter"}, tenantKeys...)
	slices.Sort(withDates)
	require.Equal(t, withDates, jsonKeys(t, got))
	deleted := tenant(got)
	require.Equal(t, "deleted", string(deleted.State))
	require.NotNil(t, deleted.DeletedAt)
	require.NotNil(t, deleted.PurgeAfter)
	require.Contains(t, stderr, "kept until")
	got, _, err = silo("tenant", "delete", "acme", "--purge", "--yes", "-o", "json")
	require.NoError(t, err)
	require.Equal(t, "purged", string(tenant(got).State))
	got, _, err = silo("tenant", "get", "acme")
	require.NoError(t, err)
	require.Regexp(t, `(?m)^acme\s+shard-1\s+`+acme.Database+`\s+purged\s`, got)

	// --wait=false leaves the operation running: the command prints it and
	// says how to follow it.
	got, stderr, err = silo("tenant", "create", "gamma", "--wait=false", "-o", "json")
	require.NoError(t, err)
	var op api.Operation
	require.NoError(t, json.Unmarshal([]byte(got), &op), got)
	require.Equal(t, api.Create, op.Kind)
	require.Equal(t, "gamma", op.TenantId)
	require.Equal(t, api.OperationStateRunning, op.State)
	require.Contains(t, stderr, "silo operation get "+op.Id)
	got, _, err = silo("operation", "get", op.Id)
	require.NoError(t, err)
	require.Regexp(t, `^ID\s+KIND\s+TENANT\s+STATE\s+UPDATED\s+ERROR\n`+op.Id+`\s+create\s+gamma\s+(running|succeeded)\s`, got)
	deadline := time.Now().Add(30 * time.Second)
	for op.State == api.OperationStateRunning && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		got, _, err = silo("operation", "get", op.Id, "-o", "json")
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal([]byte(got), &op), got)
	}
	require.Equal(t, api.OperationStateSucceeded, op.State, got)
	require.Subset(t, jsonKeys(t, got), []string{"createdAt", "finishedAt", "id", "kind", "state", "steps", "tenantId", "updatedAt"})
	got, _, err = silo("operation", "get", op.Id)
	require.NoError(t, err)
	require.Regexp(t, `(?m)^STEP\s+STATE\s+ATTEMPTS\s+STARTED\s+FINISHED\s+ERROR\n\S+\s+succeeded\s+\d+\s`, got)

	// Bad input: one line naming the rule and the code.
	_, _, err = silo("tenant", "create", "Bad_Name")
	require.ErrorContains(t, err, "lowercase")
	require.ErrorContains(t, err, "(EINVALID)")
	_, _, err = silo("tenant", "create", "delta", "--shard", "nope")
	require.ErrorContains(t, err, "(EINVALID)")
	_, _, err = silo("tenant", "get", "nope")
	require.ErrorContains(t, err, `(ENOTFOUND)`)
	_, _, err = silo("operation", "get", "nope")
	require.ErrorContains(t, err, `(ENOTFOUND)`)
	got, _, err = silo("tenant", "list", "-o", "json")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal([]byte(got), &list))
	require.Len(t, list, 3, "acme, beta and gamma; nothing else")
	require.NoError(t, stop())
}

func TestTenantCLIErrors(t *testing.T) {
	ctx := context.Background()
	t.Setenv("SILO_TOKEN", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"tenant", "export", "acme", "-f", "x.dump"}, "no admin token"},
		{[]string{"operation", "get", "x", "--token", "t", "--url", "http://127.0.0.1:1"}, "cannot reach the Silo API"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := runSilo(t, ctx, "", tc.args...)
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "\n")
		})
	}
}

// silo dev --tenant-migrations: tenants get the user's schema, at its
// version, owned by their own role.
func TestDevTenantMigrations(t *testing.T) {
	t.Parallel()
	migDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(migDir, "00003_widgets.sql"), []byte(`
-- +goose Up
CREATE TABLE widgets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
-- +goose Down
DROP TABLE widgets;
`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(migDir, "00007_widget_price.sql"), []byte(`
-- +goose Up
ALTER TABLE widgets ADD COLUMN price numeric NOT NULL DEFAULT 0;
-- +goose Down
ALTER TABLE widgets DROP COLUMN price;
`), 0o644))

	dir := devDir(t)
	var out, errOut syncBuffer
	stop := background(t, &out, &errOut, "dev", "--dir", dir, "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0", "--shards", "1",
		"--tenant-migrations", migDir, "--warm-pool-size", "0")
	url, token := waitEnv(t, dir, stop)
	got, err := runSilo(t, context.Background(), "", "tenant", "create", "shop", "-o", "json", "--url", url, "--token", token)
	require.NoError(t, err)
	var tn api.Tenant
	require.NoError(t, json.Unmarshal([]byte(got), &tn))
	require.EqualValues(t, 7, tn.SchemaVersion)

	password, err := os.ReadFile(filepath.Join(dir, "clusters", "shard-1", "password"))
	require.NoError(t, err)
	port, err := os.ReadFile(filepath.Join(dir, "clusters", "shard-1", "port"))
	require.NoError(t, err)
	conn, err := pgx.Connect(context.Background(), "postgres://silo:"+strings.TrimSpace(string(password))+"@127.0.0.1:"+strings.TrimSpace(string(port))+"/"+tn.Database)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var owner string
	var hasPrice bool
	require.NoError(t, conn.QueryRow(context.Background(), `
		SELECT tableowner, EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'widgets' AND column_name = 'price')
		FROM pg_tables WHERE tablename = 'widgets'`).Scan(&owner, &hasPrice))
	require.Equal(t, tn.Database, owner)
	require.True(t, hasPrice)
	var notes bool
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 'notes')`).Scan(&notes))
	require.False(t, notes, "the embedded example schema is not used")
	require.NoError(t, stop())
}
