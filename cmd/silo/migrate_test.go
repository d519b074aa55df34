package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/api"
)

// migrationDir returns a tenant migration directory of the test's own, with
// a copy of the example schema.
func migrationDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	b, err := os.ReadFile("../../migrations/tenant/00001_notes.sql")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "00001_notes.sql"), b, 0o644))
	return dir
}

func TestMigrateCreate(t *testing.T) {
	ctx := context.Background()
	dir := migrationDir(t)

	got, err := runSilo(t, ctx, "", "migrate", "create", "add_tags", "--dir", dir)
	require.NoError(t, err)
	path := filepath.Join(dir, "00002_add_tags.sql")
	require.Equal(t, path+"\n", got)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(b), "-- +goose Up\n")
	require.Contains(t, string(b), "-- +goose Down\n")

	// The directory from the environment, and JSON.
	t.Setenv("SILO_TENANT_MIGRATIONS", dir)
	got, err = runSilo(t, ctx, "", "migrate", "create", "add_index", "-o", "json")
	require.NoError(t, err)
	var out map[string]string
	require.NoError(t, json.Unmarshal([]byte(got), &out), got)
	require.Equal(t, filepath.Join(dir, "00003_add_index.sql"), out["path"])
	require.FileExists(t, out["path"])

	// Bad input: one line, and no file written.
	before, err := os.ReadDir(dir)
	require.NoError(t, err)
	_, err = runSilo(t, ctx, "", "migrate", "create", "Add-Tags", "--tenant-migrations", dir)
	require.ErrorContains(t, err, `migration name "Add-Tags"`)
	require.NotContains(t, err.Error(), "\n")
	_, err = runSilo(t, ctx, "", "migrate", "create", "x", "--tenant-migrations", filepath.Join(dir, "nope"))
	require.ErrorContains(t, err, "no such file or directory")
	// Its former name still works, over the environment, as the new one.
	_, err = runSilo(t, ctx, "", "migrate", "create", "x", "--dir", filepath.Join(dir, "nope"))
	require.ErrorContains(t, err, "no such file or directory")
	t.Setenv("SILO_TENANT_MIGRATIONS", "")
	_, err = runSilo(t, ctx, "", "migrate", "create", "add_tags")
	require.EqualError(t, err, "no migration directory: pass --tenant-migrations or set SILO_TENANT_MIGRATIONS")
	after, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, after, len(before))
}

func TestMigrateCLIErrors(t *testing.T) {
	ctx := context.Background()
	t.Setenv("SILO_TOKEN", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"migrate", "down", "--token", "t"}, `required flag(s) "to" not set`},
		{[]string{"migrate", "up"}, "no admin token"},
		{[]string{"migrate", "status", "--token", "t", "--url", "http://127.0.0.1:1"}, "cannot reach the Silo API"},
		{[]string{"migrate", "stop", "--token", "t"}, "accepts 1 arg(s)"},
		{[]string{"migrate", "create"}, "accepts 1 arg(s)"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := runSilo(t, ctx, "", tc.args...)
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "\n")
		})
	}
}

// silo migrate against silo dev with a migration directory of the test's
// own: the clusters are this test's, but the migrations still only add.
func TestDevMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	migDir := migrationDir(t)
	dir := devDir(t)
	var out, errOut syncBuffer
	stop := background(t, &out, &errOut, "dev", "--dir", dir, "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0", "--shards", "2",
		"--tenant-migrations", migDir)
	url, token := waitEnv(t, dir, stop)
	silo := func(args ...string) (string, string, error) {
		t.Helper()
		return runSiloStderr(t, ctx, append(args, "--url", url, "--token", token)...)
	}
	status := func() api.MigrationStatus {
		t.Helper()
		got, _, err := silo("migrate", "status", "-o", "json")
		var st api.MigrationStatus
		require.NoError(t, json.Unmarshal([]byte(got), &st), got)
		if len(st.Failures) > 0 {
			require.Equal(t, exitPartial, exitCode(err), "%v", err)
		} else {
			require.NoError(t, err)
		}
		return st
	}
	for _, tn := range []struct{ id, shard string }{{"alpha", "shard-1"}, {"bravo", "shard-2"}, {"charlie", "shard-1"}} {
		_, _, err := silo("tenant", "create", tn.id, "--shard", tn.shard)
		require.NoError(t, err)
	}

	// Before any run: everyone at the only version.
	got, _, err := silo("migrate", "status")
	require.NoError(t, err)
	require.Regexp(t, `^Latest version:\s+1\nTarget version:\s+1\nTenants behind:\s+0\n\nSHARD\s+v1\nshard-1\s+2\nshard-2\s+1\n$`, got)

	// A new migration, written with migrate create, applied with --wait.
	got, _, err = silo("migrate", "create", "add_tag", "--tenant-migrations", migDir)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(strings.TrimSpace(got), []byte(
		"-- +goose Up\nALTER TABLE notes ADD COLUMN tag text;\n-- +goose Down\nALTER TABLE notes DROP COLUMN tag;\n"), 0o644))
	st := status()
	require.EqualValues(t, 2, st.LatestVersion)
	require.EqualValues(t, 1, st.TargetVersion, "files wait for a run")

	got, stderr, err := silo("migrate", "up", "--wait")
	t.Logf("migrate up --wait:\n%s%s", stderr, got)
	require.NoError(t, err, stderr)
	require.Regexp(t, `^Run:\s+[0-9a-f-]{36}\nState:\s+succeeded\nDirection:\s+up to version 2\nTenants:\s+3 of 3 done\n`, got)
	require.Regexp(t, `(?m)^migration run [0-9a-f-]{36}: `, stderr, "progress, a line at a time off a terminal")
	got, _, err = silo("migrate", "status")
	require.NoError(t, err)
	t.Logf("migrate status:\n%s", got)
	require.Regexp(t, `^Latest version:\s+2\nTarget version:\s+2\nTenants behind:\s+0\n\nSHARD\s+v2\nshard-1\s+2\nshard-2\s+1\n\n`+
		`Latest run:\nID\s+STATE\s+DIRECTION\s+TARGET\s+DONE/FAILED/TOTAL\s+ETA\n[0-9a-f-]{36}\s+succeeded\s+up\s+2\s+3/0/3\s+-\n$`, got)
	st = status()
	require.Equal(t, 0, st.Behind)
	require.Empty(t, st.Failures)
	require.Len(t, st.Shards, 2)
	for _, sh := range st.Shards {
		require.Len(t, sh.Versions, 1, sh.Shard)
		require.EqualValues(t, 2, sh.Versions[0].Version, sh.Shard)
	}
	require.NotNil(t, st.Run)
	require.Equal(t, api.MigrationRunState("succeeded"), st.Run.State)
	got, _, err = silo("tenant", "create", "delta", "-o", "json")
	require.NoError(t, err)
	var delta api.Tenant
	require.NoError(t, json.Unmarshal([]byte(got), &delta), got)
	require.EqualValues(t, 2, delta.SchemaVersion, "the templates were migrated too")

	// Nothing pending: a run of no tenant, which succeeds.
	got, stderr, err = silo("migrate", "up", "--wait", "-o", "json")
	require.NoError(t, err, stderr)
	var run api.MigrationRun
	require.NoError(t, json.Unmarshal([]byte(got), &run), got)
	require.Equal(t, api.MigrationRunState("succeeded"), run.State)
	require.Equal(t, 0, run.Progress.Total)
	require.EqualValues(t, 2, run.TargetVersion)
	got, stderr, err = silo("migrate", "up")
	require.NoError(t, err)
	require.Regexp(t, `^Run:\s+[0-9a-f-]{36}\nState:\s+(preparing|succeeded)\n`, got)
	require.Contains(t, stderr, "follow it with: silo migrate status")
	third := regexp.MustCompile(`[0-9a-f-]{36}`).FindString(got)

	// The runs, newest first; stopping one that is over is a conflict.
	got, _, err = silo("migrate", "runs", "--limit", "2", "-o", "json")
	require.NoError(t, err)
	var runs []api.MigrationRun
	require.NoError(t, json.Unmarshal([]byte(got), &runs), got)
	require.Len(t, runs, 2)
	require.Equal(t, third, runs[0].Id.String())
	require.Equal(t, run.Id, runs[1].Id)
	got, _, err = silo("migrate", "runs")
	require.NoError(t, err)
	require.Regexp(t, `^ID\s+STATE\s+DIRECTION\s+TARGET\s+DONE\s+FAILED\s+TOTAL\s+CREATED\n`, got)
	require.Regexp(t, `(?m)^[0-9a-f-]{36}\s+succeeded\s+up\s+2\s+3\s+0\s+3\s+\d{4}-`, got)
	require.Len(t, strings.Split(strings.TrimSpace(got), "\n"), 4)
	_, _, err = silo("migrate", "stop", run.Id.String())
	require.ErrorContains(t, err, "not in progress (ECONFLICT)")
	_, _, err = silo("migrate", "stop", "nope")
	require.ErrorContains(t, err, "(EINVALID)")
	for deadline := time.Now().Add(30 * time.Second); runs[0].State != "succeeded"; time.Sleep(100 * time.Millisecond) {
		require.True(t, time.Now().Before(deadline), "run %s is still %s", third, runs[0].State)
		got, _, err = silo("migrate", "runs", "--limit", "1", "-o", "json")
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal([]byte(got), &runs), got)
	}

	// No drift.
	got, _, err = silo("migrate", "drift")
	require.NoError(t, err)
	require.Equal(t, "checked 4 tenants: 0 differ from their shard's template\n", got)
	got, _, err = silo("migrate", "drift", "-o", "json")
	require.NoError(t, err)
	var rep api.DriftReport
	require.NoError(t, json.Unmarshal([]byte(got), &rep), got)
	require.Equal(t, 4, rep.Checked)
	require.Empty(t, rep.Drifted)

	// Bad files are refused, in one line, before any tenant is touched.
	for _, bad := range []struct{ name, sql, want string }{
		{"00003_no_up.sql", "ALTER TABLE notes ADD COLUMN x int;\n", "00003_no_up.sql:1: SQL before the -- +goose Up annotation"},
		{"00003_fails.sql", "-- +goose Up\nALTER TABLE no_such_table ADD COLUMN x int;\n", "fail on a copy of shard"},
	} {
		file := filepath.Join(migDir, bad.name)
		require.NoError(t, os.WriteFile(file, []byte(bad.sql), 0o644))
		_, _, err = silo("migrate", "up", "--wait")
		require.ErrorContains(t, err, bad.want)
		require.ErrorContains(t, err, "(EINVALID)")
		require.NotContains(t, err.Error(), "\n")
		require.NoError(t, os.Remove(file))
	}
	st = status()
	require.EqualValues(t, 2, st.TargetVersion)
	require.Equal(t, 0, st.Behind)

	// A tenant changed by hand drifts: the command says how, and fails.
	password, err := os.ReadFile(filepath.Join(dir, "clusters", "shard-1", "password"))
	require.NoError(t, err)
	port, err := os.ReadFile(filepath.Join(dir, "clusters", "shard-1", "port"))
	require.NoError(t, err)
	got, _, err = silo("tenant", "get", "alpha", "-o", "json")
	require.NoError(t, err)
	var alpha api.Tenant
	require.NoError(t, json.Unmarshal([]byte(got), &alpha), got)
	conn, err := pgx.Connect(ctx, "postgres://silo:"+strings.TrimSpace(string(password))+"@127.0.0.1:"+strings.TrimSpace(string(port))+"/"+alpha.Database)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `ALTER TABLE notes ADD COLUMN rogue int`)
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))
	got, _, err = silo("migrate", "drift")
	t.Logf("migrate drift:\n%s", got)
	require.EqualError(t, err, "schema drift in 1 tenant")
	require.Regexp(t, `^checked 4 tenants: 1 differs from its shard's template\n\nalpha \(shard shard-1, version 2, template 2\)\n(  [-+] (missing|extra): .*\n)+$`, got)
	require.Regexp(t, `(?m)^  \+ extra: .*rogue`, got)
	got, _, err = silo("migrate", "drift", "-o", "json")
	require.EqualError(t, err, "schema drift in 1 tenant")
	require.NoError(t, json.Unmarshal([]byte(got), &rep), got)
	require.Len(t, rep.Drifted, 1)
	require.Equal(t, "alpha", rep.Drifted[0].TenantId)

	// A migration that passes on the template but fails on a tenant's data:
	// the canary wave stops the run, --wait fails, status lists the tenant.
	conn, err = pgx.Connect(ctx, "postgres://silo:"+strings.TrimSpace(string(password))+"@127.0.0.1:"+strings.TrimSpace(string(port))+"/"+alpha.Database)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO notes (title) VALUES ('')`)
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))
	require.NoError(t, os.WriteFile(filepath.Join(migDir, "00003_title_check.sql"), []byte(
		"-- +goose Up\nALTER TABLE notes ADD CONSTRAINT notes_title_not_empty CHECK (title <> '');\n"), 0o644))
	got, _, err = silo("migrate", "up", "--wait", "--continue-on-error")
	require.Error(t, err)
	t.Logf("migrate up --wait of a failing migration: %v", err)
	require.Regexp(t, `^migration run [0-9a-f-]{36} failed: a canary tenant failed, so the others were not touched: alpha: .*notes_title_not_empty`, err.Error())
	require.NotContains(t, err.Error(), "\n")
	require.Regexp(t, `(?m)^State:\s+failed\n`, got)
	got, _, err = silo("migrate", "status")
	require.EqualError(t, err, "1 tenant failed a migration (see above)")
	require.Equal(t, exitPartial, exitCode(err), "as migrate drift exits non-zero on drift")
	t.Logf("migrate status after a failed run:\n%s", got)
	require.Regexp(t, `(?m)^Failed tenants, not at the target version \(1\):\nTENANT\s+SHARD\s+VERSION\s+SQLSTATE\s+ERROR\nalpha\s+shard-1\s+2\s+23514\s+\S`, got)
	require.Regexp(t, `(?m)^[0-9a-f-]{36}\s+failed\s+up\s+3\s+\d+/1/4\s+-$`, got)
	st = status()
	require.EqualValues(t, 3, st.TargetVersion)
	require.Len(t, st.Failures, 1)
	require.Equal(t, "23514", st.Failures[0].Sqlstate)
	require.NoError(t, stop())
}

func TestRunProgress(t *testing.T) {
	eta := int64(12)
	run := api.MigrationRun{State: "running", EtaSeconds: &eta}
	run.Progress.Total, run.Progress.Done, run.Progress.Failed, run.Progress.Running, run.Progress.Pending = 1000, 447, 3, 8, 542
	var buf strings.Builder
	p := &runProgress{w: &buf, tty: true}
	p.show(run)
	require.Equal(t, "\r[#########-----------] 450/1000 tenants  3 failed  ETA 12s\033[K", buf.String())
	buf.Reset()
	run.State, run.EtaSeconds = "canary", nil
	run.Progress.Failed = 0
	p.show(run)
	p.end()
	require.Equal(t, "\rcanary [########------------] 447/1000 tenants\033[K\n", buf.String())

	// Off a terminal: a line now, then none until 5s have passed.
	buf.Reset()
	p = &runProgress{w: &buf}
	p.show(run)
	p.show(run)
	p.end()
	require.Equal(t, "migration run 00000000-0000-0000-0000-000000000000: canary 447/1000 tenants\n", buf.String())
}

// Ctrl-C while waiting leaves the run going, and says so.
func TestMigrateWaitCancelled(t *testing.T) {
	var stderr strings.Builder
	g := &globals{stderr: &stderr, timeout: time.Minute}
	c, err := api.NewClientWithResponses("http://127.0.0.1:1")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = g.waitRun(ctx, c, api.MigrationRun{State: "running"})
	require.ErrorContains(t, err, "stopped waiting; migration run 00000000-0000-0000-0000-000000000000 goes on in the background")
	require.Contains(t, stderr.String(), "running 0/0 tenants")
}
