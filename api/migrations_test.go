package api_test

import (
	"io/fs"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/migrations"
)

// swapFS is an fs.FS whose files a test replaces, as an operator edits a
// migration directory under a running server.
type swapFS struct{ cur atomic.Pointer[fs.FS] }

func (s *swapFS) Open(name string) (fs.File, error) { return (*s.cur.Load()).Open(name) }
func (s *swapFS) set(f fs.FS)                       { s.cur.Store(&f) }

// The migration endpoints, through the spec: status, a run from start to
// end, bad input, malformed files (422, nothing started), stop, drift. The
// files stay at the embedded version 1: the shards' templates are shared by
// this package's tests.
func TestMigrationsAPI(t *testing.T) {
	t.Parallel()
	embedded, err := migrations.TenantFS("")
	require.NoError(t, err)
	files := &swapFS{}
	files.set(embedded)
	b := setup(t, serverOpts{migrationFiles: files})
	b.addShards(t)
	b.createTenant(t, "mig-one")

	st := decode[api.MigrationStatus](t, b.do(t, "GET", "/v1/migrations/status", ""))
	require.EqualValues(t, 1, st.LatestVersion)
	require.EqualValues(t, 1, st.TargetVersion)
	require.Zero(t, st.Behind)
	require.Nil(t, st.Run)
	require.Len(t, st.Shards, 1)
	require.Equal(t, 1, st.Shards[0].Versions[0].Tenants)

	r := b.do(t, "POST", "/v1/migrations/runs", `{"concurrency":2,"perShard":1}`)
	require.Equal(t, 202, r.status, "body: %s", r.body)
	run := decode[api.MigrationRun](t, r)
	loc := r.header.Get("Location")
	require.Equal(t, "/v1/migrations/runs/"+run.Id.String(), loc)
	require.Eventually(t, func() bool {
		run = decode[api.MigrationRun](t, b.do(t, "GET", loc, ""))
		return run.State == api.MigrationRunStateSucceeded
	}, 30*time.Second, 50*time.Millisecond)
	require.Zero(t, run.Progress.Total, "every tenant is at version 1")
	list := decode[api.MigrationRunList](t, b.do(t, "GET", "/v1/migrations/runs?limit=10", ""))
	require.Len(t, list.Items, 1)

	for _, tc := range []struct {
		body   string
		status int
		code   string
	}{
		{`{"concurrency":0}`, 422, "EINVALID"},
		{`{"perShard":1000}`, 422, "EINVALID"},
		{`{"canary":-1}`, 422, "EINVALID"},
		{`{"direction":"sideways"}`, 422, "EINVALID"},
		{`{"direction":"down"}`, 422, "EINVALID"},
		{`{"to":9}`, 422, "EINVALID"},
		{`{"bogus":1}`, 400, "EMALFORMED"},
		{`[]`, 400, "EMALFORMED"},
		{``, 400, "EMALFORMED"},
	} {
		r := b.do(t, "POST", "/v1/migrations/runs", tc.body)
		require.Equal(t, tc.status, r.status, "%s: %s", tc.body, r.body)
		require.Equal(t, tc.code, string(r.problem(t).Code), tc.body)
	}

	// An operator drops a malformed file in the directory: refused, and no
	// run starts.
	files.set(fstest.MapFS{
		"00001_notes.sql": &fstest.MapFile{Data: mustRead(t, embedded, "00001_notes.sql")},
		"00002_oops.sql":  &fstest.MapFile{Data: []byte("ALTER TABLE notes ADD COLUMN x int;\n")},
	})
	r = b.do(t, "POST", "/v1/migrations/runs", `{}`)
	require.Equal(t, 422, r.status, "body: %s", r.body)
	require.Contains(t, *r.problem(t).Detail, "00002_oops.sql")
	// Valid goose, failing SQL: refused by the trial on a template copy.
	files.set(fstest.MapFS{
		"00001_notes.sql": &fstest.MapFile{Data: mustRead(t, embedded, "00001_notes.sql")},
		"00002_oops.sql":  &fstest.MapFile{Data: []byte("-- +goose Up\nALTER TABLE nosuch ADD COLUMN x int;\n")},
	})
	r = b.do(t, "POST", "/v1/migrations/runs", `{}`)
	require.Equal(t, 422, r.status, "body: %s", r.body)
	require.Contains(t, *r.problem(t).Detail, "no tenant was touched")
	files.set(embedded)
	list = decode[api.MigrationRunList](t, b.do(t, "GET", "/v1/migrations/runs", ""))
	require.Len(t, list.Items, 1, "no run started")
	st = decode[api.MigrationStatus](t, b.do(t, "GET", "/v1/migrations/status", ""))
	require.EqualValues(t, 1, st.TargetVersion)

	r = b.do(t, "POST", loc+"/stop", "")
	require.Equal(t, 409, r.status, "a finished run: body %s", r.body)
	r = b.do(t, "POST", "/v1/migrations/runs/00000000-0000-4000-8000-000000000000/stop", "")
	require.Equal(t, 404, r.status)
	r = b.do(t, "GET", "/v1/migrations/runs/nope", "")
	require.Equal(t, 422, r.status)

	drift := decode[api.DriftReport](t, b.do(t, "GET", "/v1/migrations/drift", ""))
	require.Equal(t, 1, drift.Checked)
	require.Empty(t, drift.Drifted)
	require.Len(t, drift.Templates, 1)
	require.Len(t, drift.Templates[0].Fingerprint, 64)
}

// Without a runner, the migration endpoints answer 503.
func TestMigrationsAPIOff(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.do(t, "GET", "/v1/migrations/status", "")
	require.Equal(t, 503, r.status)
	require.Equal(t, "EUNAVAILABLE", string(r.problem(t).Code))
}

func mustRead(t *testing.T, fsys fs.FS, name string) []byte {
	t.Helper()
	b, err := fs.ReadFile(fsys, name)
	require.NoError(t, err)
	return b
}
