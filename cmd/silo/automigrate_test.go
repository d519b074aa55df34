package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/api"
)

// A server that starts with tenants behind the latest migration file says
// so and leaves them; with --auto-migrate it starts a run for them.
func TestDevAutoMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	migDir := migrationDir(t)
	dir := devDir(t)
	var out *syncBuffer
	start := func(args ...string) (url, token string, errOut *syncBuffer, stop func() error) {
		out, errOut = &syncBuffer{}, &syncBuffer{}
		_ = os.Remove(filepath.Join(dir, "env")) // the last run's
		stop = background(t, out, errOut, append([]string{"dev", "--dir", dir, "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0",
			"--tenant-migrations", migDir, "--warm-pool-size", "0"}, args...)...)
		url, token = waitEnv(t, dir, stop)
		return url, token, errOut, stop
	}
	status := func(url, token string) api.MigrationStatus {
		t.Helper()
		got, err := runSilo(t, ctx, "", "migrate", "status", "-o", "json", "--url", url, "--token", token)
		require.NoError(t, err)
		var st api.MigrationStatus
		require.NoError(t, json.Unmarshal([]byte(got), &st), got)
		return st
	}

	url, token, _, stop := start()
	_, err := runSilo(t, ctx, "", "tenant", "create", "auto-one", "--url", url, "--token", token)
	require.NoError(t, err)
	require.NoError(t, stop())

	require.NoError(t, os.WriteFile(filepath.Join(migDir, "00002_tags.sql"),
		[]byte("-- +goose Up\nALTER TABLE notes ADD COLUMN tags text[];\n"), 0o644))
	url, token, errOut, stop := start()
	require.Contains(t, errOut.String(), `"msg":"tenant migrations pending: run `, "stdout: %s", out.String())
	st := status(url, token)
	require.EqualValues(t, 2, st.LatestVersion)
	require.EqualValues(t, 1, st.TargetVersion, "not applied without --auto-migrate")
	require.Len(t, st.Shards, 1)
	require.EqualValues(t, 1, st.Shards[0].Versions[0].Version)
	require.Nil(t, st.Run)
	require.NoError(t, stop())

	url, token, errOut, _ = start("--auto-migrate")
	require.Contains(t, errOut.String(), "run started (--auto-migrate)")
	require.Eventually(t, func() bool {
		st = status(url, token)
		return st.Run != nil && st.Run.State == api.MigrationRunStateSucceeded
	}, time.Minute, 100*time.Millisecond)
	require.EqualValues(t, 2, st.TargetVersion)
	require.Zero(t, st.Behind)
	require.EqualValues(t, 2, st.Shards[0].Versions[0].Version)
	require.Equal(t, "auto-migrate", st.Run.CreatedBy)
}
