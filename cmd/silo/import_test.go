package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/pgcluster"
)

// An export imports into another tenant, as that tenant's own role, with
// the same data; the tenant takes the archive's schema version, and a run
// brings it up. What is no archive, an archive ahead of the tenant's
// version, and a tenant that is not active are refused, and change
// nothing.
func TestDevImport(t *testing.T) {
	t.Parallel()
	binDir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	if _, err := os.Stat(filepath.Join(binDir, "pg_restore")); err != nil {
		t.Skipf("no pg_restore beside the server binaries in %s", binDir)
	}
	dir, stop, silo := startDevCLI(t)
	tenant := func(s string) api.Tenant { t.Helper(); return fromJSON[api.Tenant](t, s) }
	query := func(id, sql string) string { t.Helper(); return silosQuery(t, silo, id, sql) }

	_, _, err = silo("tenant", "create", "acme", "--shard", "shard-1")
	require.NoError(t, err)
	_, _, err = silo("tenant", "create", "beta", "--shard", "shard-2")
	require.NoError(t, err)
	query("acme", "INSERT INTO notes (title) VALUES ('from acme 1'), ('from acme 2')")
	query("beta", "INSERT INTO notes (title) VALUES ('beta''s own')")
	v1 := filepath.Join(t.TempDir(), "acme-v1.dump")
	_, _, err = silo("tenant", "export", "acme", "-f", v1)
	require.NoError(t, err)

	// Not an archive: refused, beta unchanged.
	junk := filepath.Join(t.TempDir(), "junk")
	require.NoError(t, os.WriteFile(junk, []byte("COPY notes FROM stdin;\n"), 0o600))
	_, _, err = silo("tenant", "import", "beta", "-f", junk)
	require.ErrorContains(t, err, "not a pg_dump custom-format archive (pg_dump --format=custom, as silo tenant export writes) (EINVALID)")
	require.Contains(t, query("beta", "SELECT title FROM notes"), "beta's own")

	// A suspended tenant is not imported into.
	_, _, err = silo("tenant", "suspend", "beta")
	require.NoError(t, err)
	_, _, err = silo("tenant", "import", "beta", "-f", v1)
	require.ErrorContains(t, err, `tenant "beta" is suspended; import into an active tenant (ECONFLICT)`)
	_, _, err = silo("tenant", "resume", "beta")
	require.NoError(t, err)

	// The round trip: acme's rows in beta's database, owned by beta's role,
	// and recorded as an operation and in the audit log.
	got, stderr, err := silo("tenant", "import", "beta", "-f", v1, "-o", "json")
	require.NoError(t, err, stderr)
	require.Equal(t, int64(1), tenant(got).SchemaVersion)
	require.Equal(t, "title\nfrom acme 1\nfrom acme 2\n", query("beta", "SELECT title FROM notes ORDER BY id"))
	require.Equal(t, "owned\ntrue\n", query("beta", "SELECT tableowner = current_user AS owned FROM pg_tables WHERE tablename = 'notes'"))
	got, _, err = silo("operation", "list", "--tenant", "beta", "--kind", "import", "-o", "json")
	require.NoError(t, err)
	var ops []api.Operation
	require.NoError(t, json.Unmarshal([]byte(got), &ops), got)
	require.Len(t, ops, 1)
	require.Equal(t, api.OperationStateSucceeded, ops[0].State)
	got, _, err = silo("audit", "--action", "tenant.import", "-o", "json")
	require.NoError(t, err)
	var audit []api.AuditEntry
	require.NoError(t, json.Unmarshal([]byte(got), &audit), got)
	require.Len(t, audit, 2, "the refused attempt on a suspended tenant is recorded too (not one that is no archive: it names nothing yet)")
	require.Equal(t, "ok", audit[0].Result)

	// Version 2 for the fleet, with a down section; an archive of it.
	migDir := filepath.Join(dir, "tenant-migrations")
	require.NoError(t, os.WriteFile(filepath.Join(migDir, "00002_tags.sql"), []byte(
		"-- +goose Up\nALTER TABLE notes ADD COLUMN tag text;\n-- +goose Down\nALTER TABLE notes DROP COLUMN tag;\n"), 0o644))
	_, stderr, err = silo("migrate", "up", "--wait")
	require.NoError(t, err, stderr)
	v2 := filepath.Join(t.TempDir(), "acme-v2.dump")
	_, _, err = silo("tenant", "export", "acme", "-f", v2)
	require.NoError(t, err)

	// An older archive: the tenant takes its version, and is behind until
	// a run brings it up.
	got, _, err = silo("tenant", "import", "beta", "-f", v1, "-o", "json")
	require.NoError(t, err)
	require.Equal(t, int64(1), tenant(got).SchemaVersion)
	got, _, err = silo("migrate", "status", "-o", "json")
	require.NoError(t, err)
	var st api.MigrationStatus
	require.NoError(t, json.Unmarshal([]byte(got), &st), got)
	require.EqualValues(t, 1, st.Behind)
	_, stderr, err = silo("migrate", "up", "--wait")
	require.NoError(t, err, stderr)
	got, _, err = silo("tenant", "get", "beta", "-o", "json")
	require.NoError(t, err)
	require.Equal(t, int64(2), tenant(got).SchemaVersion)
	require.Contains(t, query("beta", "SELECT tag FROM notes LIMIT 1"), "tag")

	// An archive ahead of the tenant: refused, the tenant unchanged.
	_, stderr, err = silo("migrate", "down", "--to", "1", "--wait")
	require.NoError(t, err, stderr)
	query("beta", "INSERT INTO notes (title) VALUES ('after the run down')")
	_, _, err = silo("tenant", "import", "beta", "-f", v2)
	require.ErrorContains(t, err, `the archive is at schema version 2, ahead of tenant "beta"'s 1`)
	require.ErrorContains(t, err, "(EINVALID)")
	require.Contains(t, query("beta", "SELECT title FROM notes"), "after the run down")
	require.False(t, strings.Contains(query("beta", "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'"), "tag"))
	require.NoError(t, stop())
}
