package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/pgcluster"
)

// The crash suite: a real `silo serve` process is killed (SIGKILL, by a
// failpoint) at every step boundary of every operation, a new server is
// started on the same catalog, and the operation must reach its end within
// 30 s, the tenant reachable with every acknowledged row, nothing left
// orphaned on the shards.

const (
	crashToken = "crash-test-token-0123456789"
	crashKey   = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"
	// recoverWithin is the bound: a killed server's operation ends
	// within 30 s of its successor's start.
	recoverWithin = 30 * time.Second
)

var siloBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "silo-crash-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "silo")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v: %s", err, out)
	}
	return bin, nil
})

// crashFleet is a catalog and two shards of a test's own, so that what a
// check finds on the shards is this test's doing.
type crashFleet struct {
	ctx     context.Context
	dir     string
	catalog string // DSN
	pool    *pgxpool.Pool
	shards  []*pgcluster.Cluster
	files   string // tenant migrations
}

func newCrashFleet(t *testing.T) *crashFleet {
	t.Helper()
	if _, err := siloBinary(); err != nil {
		t.Fatal(err)
	}
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	dir, err := os.MkdirTemp("", "silo-crash-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	f := &crashFleet{ctx: ctx, dir: dir, catalog: pgtest.NewDatabase(t, fleet.Catalog), files: filepath.Join(dir, "migrations")}
	require.NoError(t, os.MkdirAll(f.files, 0o755))
	first, err := os.ReadFile("../../migrations/tenant/00001_notes.sql")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(f.files, "00001_notes.sql"), first, 0o644))
	cfgs := []pgcluster.Config{
		{Dir: filepath.Join(dir, "s0"), Fast: true},
		{Dir: filepath.Join(dir, "s1"), Fast: true},
	}
	f.shards, err = pgcluster.StartAll(ctx, cfgs...)
	for _, c := range f.shards {
		if c != nil {
			t.Cleanup(func() { _ = c.Stop(context.Background()) })
		}
	}
	require.NoError(t, err)
	f.pool, err = pgxpool.New(ctx, f.catalog)
	require.NoError(t, err)
	t.Cleanup(f.pool.Close)
	return f
}

// server is one `silo serve` process.
type server struct {
	cmd    *exec.Cmd
	url    string
	stderr *syncBuffer
	exited chan struct{}
	err    error
}

// start runs a server on the fleet, with failpoints armed ("" for none),
// and waits until it serves.
func (f *crashFleet) start(t *testing.T, failpoints string) *server {
	t.Helper()
	bin, err := siloBinary()
	require.NoError(t, err)
	s := &server{stderr: &syncBuffer{}, exited: make(chan struct{})}
	s.cmd = exec.Command(bin, "serve", "--listen", "127.0.0.1:0")
	s.cmd.Env = append(os.Environ(),
		"SILO_CATALOG_DSN="+f.catalog, "SILO_ADMIN_TOKEN="+crashToken, "SILO_SECRET_KEY="+crashKey,
		"SILO_RECOVERY_DELAY=1s", "SILO_WARM_POOL_SIZE=0", "SILO_TENANT_MIGRATIONS="+f.files,
		"SILO_SHUTDOWN_TIMEOUT=10s", engine.FailpointsEnv+"="+failpoints)
	s.cmd.Stderr = s.stderr
	require.NoError(t, s.cmd.Start())
	go func() { s.err = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() { s.kill() })
	addrRE := regexp.MustCompile(`"msg":"silo serving".*"addr":"([^"]+)"`)
	deadline := time.Now().Add(60 * time.Second)
	for s.url == "" {
		if m := addrRE.FindStringSubmatch(s.stderr.String()); m != nil {
			s.url = "http://" + m[1]
			break
		}
		select {
		case <-s.exited:
			t.Fatalf("silo serve exited: %v\n%s", s.err, s.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		require.True(t, time.Now().Before(deadline), "silo serve did not start: %s", s.stderr.String())
	}
	return s
}

func (s *server) kill() {
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
}

// stop ends the server with SIGTERM and returns how long it took.
func (s *server) stop(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-s.exited:
	case <-time.After(45 * time.Second):
		t.Fatalf("silo serve did not stop within 45s of SIGTERM:\n%s", s.stderr.String())
	}
	took := time.Since(start)
	t.Logf("SIGTERM: stopped in %s", took.Round(time.Millisecond))
	return took
}

// died waits for the server to end by its failpoint's SIGKILL.
func (s *server) died(t *testing.T, failpoint string) {
	t.Helper()
	select {
	case <-s.exited:
	case <-time.After(2 * time.Minute):
		t.Fatalf("failpoint %s never fired:\n%s", failpoint, s.stderr.String())
	}
	require.Contains(t, s.stderr.String(), `"failpoint":"`+failpoint+`"`)
}

// do sends a request; a server that dies meanwhile gives status 0.
func (s *server) do(t *testing.T, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.url+path, r)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+crashToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	out := map[string]any{}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func (s *server) must(t *testing.T, method, path string, body any, want ...int) map[string]any {
	t.Helper()
	code, out := s.do(t, method, path, body)
	require.Contains(t, want, code, "%s %s: %v", method, path, out)
	return out
}

// count returns the rows of notes in a tenant, through the data API.
func (s *server) count(t *testing.T, id string) int {
	t.Helper()
	out := s.must(t, "POST", "/v1/tenants/"+id+"/query", map[string]any{"sql": "SELECT count(*)::int AS n FROM notes"}, 200)
	rows, _ := out["rows"].([]any)
	require.Len(t, rows, 1, "%v", out)
	switch row := rows[0].(type) {
	case map[string]any:
		return int(row["n"].(float64))
	case []any:
		return int(row[0].(float64))
	}
	t.Fatalf("odd rows: %v", out)
	return 0
}

// lastOperation returns the id and state of a tenant's latest operation.
func (f *crashFleet) lastOperation(t *testing.T, tenant string) (id, state string, steps []string) {
	t.Helper()
	var raw []byte
	err := f.pool.QueryRow(f.ctx, `
		SELECT id::text, state, steps FROM operations WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT 1`, tenant).Scan(&id, &state, &raw)
	require.NoError(t, err)
	var st []struct{ Name string }
	require.NoError(t, json.Unmarshal(raw, &st))
	for _, s := range st {
		steps = append(steps, s.Name)
	}
	return id, state, steps
}

// ended waits for a tenant's latest operation to end, within the issue's
// bound, and returns its state.
func (f *crashFleet) ended(t *testing.T, tenant string) string {
	t.Helper()
	var state string
	deadline := time.Now().Add(recoverWithin)
	for {
		_, state, _ = f.lastOperation(t, tenant)
		if state != "running" || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.NotEqual(t, "running", state, "tenant %s's operation did not end within %s of the new server's start", tenant, recoverWithin)
	return state
}

// orphans lists what is on the shards that the catalog does not name: the
// databases, roles, replication slots and subscriptions of tenants, warm
// units and moves.
func (f *crashFleet) orphans(t *testing.T) []string {
	t.Helper()
	named := map[string]bool{}
	rows, err := f.pool.Query(f.ctx, `
		SELECT database_name FROM tenants WHERE state <> 'purged'
		UNION SELECT name FROM retired_databases
		UNION SELECT name FROM warm_databases`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	for _, n := range names {
		named[n] = true
	}
	var found []string
	for i, c := range f.shards {
		conn, err := pgx.Connect(f.ctx, c.DSN("postgres"))
		require.NoError(t, err)
		rows, err := conn.Query(f.ctx, `
			SELECT 'database ' || datname FROM pg_database WHERE datname LIKE 't\_%'
			UNION ALL SELECT 'role ' || rolname FROM pg_roles WHERE rolname LIKE 't\_%' OR rolname LIKE 'silo\_sub\_%'
			UNION ALL SELECT 'slot ' || slot_name FROM pg_replication_slots
			UNION ALL SELECT 'subscription ' || subname FROM pg_subscription`)
		require.NoError(t, err)
		objs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		conn.Close(f.ctx)
		for _, o := range objs {
			kind, name, _ := strings.Cut(o, " ")
			if (kind == "database" || kind == "role") && named[name] {
				continue
			}
			found = append(found, fmt.Sprintf("s%d: %s", i, o))
		}
	}
	return found
}

// addShards registers the fleet's shards through a server.
func (f *crashFleet) addShards(t *testing.T, s *server) {
	t.Helper()
	for i, c := range f.shards {
		s.must(t, "POST", "/v1/shards", map[string]any{"name": fmt.Sprintf("s%d", i), "dsn": c.DSN("postgres")}, 201)
	}
}

// crashCase is one operation, killed at one failpoint.
type crashCase struct {
	failpoint string
	// prepare readies the tenant (on a server without failpoints) and
	// returns the rows it acknowledged.
	prepare func(t *testing.T, s *server, id string) int
	// request starts the operation on the server that will die.
	request func(t *testing.T, s *server, id string)
	// check asserts the end state, on the new server.
	check func(t *testing.T, s *server, id, state string, rows int)
}

func createTenant(t *testing.T, s *server, id, shard string) {
	t.Helper()
	s.must(t, "POST", "/v1/tenants?wait=60s", map[string]any{"id": id, "shard": shard}, 201)
}

func writeRows(t *testing.T, s *server, id string, n int) int {
	t.Helper()
	s.must(t, "POST", "/v1/tenants/"+id+"/query",
		map[string]any{"sql": fmt.Sprintf("INSERT INTO notes (title) SELECT 'row-' || g FROM generate_series(1, %d) g", n)}, 200)
	return n
}

func tenantState(t *testing.T, s *server, id string) (state, shard string) {
	t.Helper()
	out := s.must(t, "GET", "/v1/tenants/"+id, nil, 200, 404)
	state, _ = out["state"].(string)
	shard, _ = out["shard"].(string)
	return state, shard
}

// run runs one case: a fresh tenant, the operation started on a server
// armed with the failpoint, the kill, a new server, and the checks.
func (f *crashFleet) run(t *testing.T, n int, c crashCase) {
	t.Helper()
	id := fmt.Sprintf("crash-%d", n)
	helper := f.start(t, "")
	rows := c.prepare(t, helper, id)
	helper.stop(t)

	victim := f.start(t, c.failpoint+"=kill")
	go c.request(t, victim, id)
	victim.died(t, c.failpoint)

	successor := f.start(t, "")
	state := f.ended(t, id)
	if state != "succeeded" {
		var msg string
		var steps []byte
		_ = f.pool.QueryRow(f.ctx, `SELECT error, steps FROM operations WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT 1`, id).Scan(&msg, &steps)
		t.Logf("operation %s: %s; steps %s", state, msg, steps)
	}
	c.check(t, successor, id, state, rows)
	require.Empty(t, f.orphans(t), "after a kill at %s", c.failpoint)
	// silo check, the oracle, agrees.
	report := successor.must(t, "GET", "/v1/check", nil, 200)
	require.Equal(t, true, report["clean"], "after a kill at %s: %v", c.failpoint, report["findings"])
	took := successor.stop(t)
	require.Less(t, took, 30*time.Second, "SIGTERM ends a server within 30 s")
}

// steps returns an operation kind's steps, as a run without failpoints
// recorded them: every boundary of the operation is a failpoint.
func boundaries(kind string, steps []string) []string {
	points := []string{kind + "/before-" + steps[0]}
	for _, s := range steps {
		points = append(points, kind+"/after-"+s)
	}
	return points
}

func TestCrashLifecycle(t *testing.T) {
	t.Parallel()
	f := newCrashFleet(t)
	s := f.start(t, "")
	f.addShards(t, s)
	// One clean run of each kind names its steps.
	steps := map[string][]string{}
	createTenant(t, s, "probe", "s0")
	_, _, steps["create"] = f.lastOperation(t, "probe")
	for _, op := range []struct{ kind, method, path string }{
		{"suspend", "POST", "/suspend"}, {"resume", "POST", "/resume"}, {"delete", "DELETE", ""},
	} {
		s.must(t, op.method, "/v1/tenants/probe"+op.path+"?wait=60s", nil, 200)
		_, _, steps[op.kind] = f.lastOperation(t, "probe")
	}
	s.must(t, "DELETE", "/v1/tenants/probe?purge=true&wait=60s", nil, 200)
	_, _, steps["purge"] = f.lastOperation(t, "probe")
	s.stop(t)
	t.Logf("steps: %v", steps)

	none := func(*testing.T, *server, string) int { return 0 }
	active := func(t *testing.T, s *server, id string) int {
		createTenant(t, s, id, "s0")
		return writeRows(t, s, id, 50)
	}
	suspended := func(t *testing.T, s *server, id string) int {
		n := active(t, s, id)
		s.must(t, "POST", "/v1/tenants/"+id+"/suspend?wait=60s", nil, 200)
		return n
	}
	post := func(path string) func(*testing.T, *server, string) {
		return func(t *testing.T, s *server, id string) { s.do(t, "POST", "/v1/tenants/"+id+path+"?wait=60s", nil) }
	}
	// A lifecycle operation resumed after a crash goes forward to its end.
	expect := func(want string, rowsKept bool) func(*testing.T, *server, string, string, int) {
		return func(t *testing.T, s *server, id, opState string, rows int) {
			require.Equal(t, "succeeded", opState)
			state, _ := tenantState(t, s, id)
			require.Equal(t, want, state)
			if rowsKept {
				require.Equal(t, rows, s.count(t, id), "every acknowledged row")
			}
		}
	}
	var cases []crashCase
	for _, fp := range boundaries("create", steps["create"]) {
		cases = append(cases, crashCase{fp, none, func(t *testing.T, s *server, id string) {
			s.do(t, "POST", "/v1/tenants?wait=60s", map[string]any{"id": id, "shard": "s0"})
		}, func(t *testing.T, s *server, id, opState string, _ int) {
			// Forward after a crash, never rolled back: the tenant works.
			require.Equal(t, "succeeded", opState)
			state, _ := tenantState(t, s, id)
			require.Equal(t, "active", state)
			require.Equal(t, 0, s.count(t, id))
		}})
	}
	for _, fp := range boundaries("suspend", steps["suspend"]) {
		cases = append(cases, crashCase{fp, active, post("/suspend"), expect("suspended", false)})
	}
	for _, fp := range boundaries("resume", steps["resume"]) {
		cases = append(cases, crashCase{fp, suspended, post("/resume"), expect("active", true)})
	}
	for _, fp := range boundaries("delete", steps["delete"]) {
		cases = append(cases, crashCase{fp, active, func(t *testing.T, s *server, id string) {
			s.do(t, "DELETE", "/v1/tenants/"+id+"?wait=60s", nil)
		}, expect("deleted", false)})
	}
	for _, fp := range boundaries("purge", steps["purge"]) {
		cases = append(cases, crashCase{fp, active, func(t *testing.T, s *server, id string) {
			s.do(t, "DELETE", "/v1/tenants/"+id+"?purge=true&wait=60s", nil)
		}, func(t *testing.T, s *server, id, opState string, _ int) {
			require.Equal(t, "succeeded", opState)
			state, _ := tenantState(t, s, id)
			require.Equal(t, "purged", state, "a tombstone is left")
		}})
	}
	for i, c := range cases {
		t.Run(strings.ReplaceAll(c.failpoint, "/", "_"), func(t *testing.T) { f.run(t, i, c) })
	}
}

// hasPgDump reports whether the server binaries have a pg_dump that can
// read them (the PostgreSQL 16+ packages from npm have none): a move's
// schema copy needs one.
func hasPgDumpFor(t *testing.T) bool {
	t.Helper()
	dir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(dir, "pg_dump"))
	return err == nil
}

func TestCrashMove(t *testing.T) {
	t.Parallel()
	if !hasPgDumpFor(t) {
		t.Skip("a move's schema copy needs pg_dump, which the PostgreSQL 16+ packages lack")
	}
	f := newCrashFleet(t)
	s := f.start(t, "")
	f.addShards(t, s)
	createTenant(t, s, "probe", "s0")
	writeRows(t, s, "probe", 10)
	s.must(t, "POST", "/v1/tenants/probe/move?wait=60s", map[string]any{"shard": "s1"}, 200)
	_, _, steps := f.lastOperation(t, "probe")
	s.stop(t)
	t.Logf("move steps: %v", steps)

	points := append(boundaries("move", steps), "move/after-flip")
	for i, fp := range points {
		t.Run(strings.ReplaceAll(fp, "/", "_"), func(t *testing.T) {
			f.run(t, i, crashCase{fp, func(t *testing.T, s *server, id string) int {
				createTenant(t, s, id, "s0")
				return writeRows(t, s, id, 500)
			}, func(t *testing.T, s *server, id string) {
				s.do(t, "POST", "/v1/tenants/"+id+"/move?wait=60s", map[string]any{"shard": "s1"})
			}, func(t *testing.T, s *server, id, opState string, rows int) {
				// Resumed after a crash, a move goes forward: before its
				// flip as after it, the tenant ends on the target.
				require.Equal(t, "succeeded", opState)
				state, shard := tenantState(t, s, id)
				require.Equal(t, "active", state)
				require.Equal(t, "s1", shard)
				require.Equal(t, rows, s.count(t, id), "every acknowledged row, once")
			}})
		})
	}
}

// A move whose cleanup fails after the flip (the source shard down, say)
// is retried forward until it succeeds: its undo would drop the target,
// the tenant's only live copy.
func TestMoveCleanupFailsAfterFlip(t *testing.T) {
	t.Parallel()
	if !hasPgDumpFor(t) {
		t.Skip("a move's schema copy needs pg_dump, which the PostgreSQL 16+ packages lack")
	}
	f := newCrashFleet(t)
	s := f.start(t, "move/before-cleanup=error*3")
	f.addShards(t, s)
	createTenant(t, s, "flipped", "s0")
	rows := writeRows(t, s, "flipped", 300)
	code, _ := s.do(t, "POST", "/v1/tenants/flipped/move?wait=5s", map[string]any{"shard": "s1"})
	require.Contains(t, []int{200, 202}, code)
	require.Equal(t, "succeeded", f.ended(t, "flipped"))
	_, _, steps := f.lastOperation(t, "flipped")
	for _, st := range steps {
		require.NotContains(t, st, "undo:", "no undo after the flip")
	}
	state, shard := tenantState(t, s, "flipped")
	require.Equal(t, "active", state)
	require.Equal(t, "s1", shard)
	require.Equal(t, rows, s.count(t, "flipped"))
	require.Equal(t, 3, strings.Count(s.stderr.String(), `"failpoint":"move/before-cleanup"`))
}

// lastRun returns the latest migration run's id and state.
func (f *crashFleet) lastRun(t *testing.T) (id, state string) {
	t.Helper()
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT id, state FROM migration_runs ORDER BY created_at DESC LIMIT 1`).Scan(&id, &state))
	return id, state
}

func TestCrashMigrationRun(t *testing.T) {
	t.Parallel()
	f := newCrashFleet(t)
	s := f.start(t, "")
	f.addShards(t, s)
	tenants := []string{"m-1", "m-2", "m-3", "m-4", "m-5", "m-6"}
	for i, id := range tenants {
		createTenant(t, s, id, fmt.Sprintf("s%d", i%2))
		writeRows(t, s, id, 5)
	}
	s.stop(t)

	for i, fp := range []string{"migrate/prepare", "migrate/mid-fleet"} {
		t.Run(strings.ReplaceAll(fp, "/", "_"), func(t *testing.T) {
			version := i + 2
			require.NoError(t, os.WriteFile(filepath.Join(f.files, fmt.Sprintf("%05d_crash.sql", version)),
				fmt.Appendf(nil, "-- +goose Up\nALTER TABLE notes ADD COLUMN crash_%d int;\n\n-- +goose Down\nALTER TABLE notes DROP COLUMN crash_%d;\n", version, version), 0o644))
			victim := f.start(t, fp+"=kill")
			victim.must(t, "POST", "/v1/migrations/runs", map[string]any{}, 201, 202)
			victim.died(t, fp)

			successor := f.start(t, "")
			deadline := time.Now().Add(recoverWithin)
			var id, state string
			for {
				id, state = f.lastRun(t)
				if state == "succeeded" || state == "failed" || time.Now().After(deadline) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			require.Equal(t, "succeeded", state, "run %s did not succeed within %s of the new server's start:\n%s", id, recoverWithin, successor.stderr.String())
			for _, tn := range tenants {
				var v int64
				require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT schema_version FROM tenants WHERE id = $1`, tn).Scan(&v))
				require.EqualValues(t, version, v, tn)
				require.Equal(t, 5, successor.count(t, tn))
			}
			report := successor.must(t, "GET", "/v1/check", nil, 200)
			require.Equal(t, true, report["clean"], "%v", report["findings"])
			successor.stop(t)
		})
	}
}

// Two servers on one catalog: one killed mid-operation, the other, which
// ran all along, finishes its work.
func TestCrashTwoServers(t *testing.T) {
	t.Parallel()
	f := newCrashFleet(t)
	survivor := f.start(t, "")
	f.addShards(t, survivor)
	createTenant(t, survivor, "two-a", "s0")
	rows := writeRows(t, survivor, "two-a", 200)

	points := []string{"create/after-database", "suspend/after-disable-login"}
	if hasPgDumpFor(t) {
		points = append(points, "move/after-flip")
	}
	victim := f.start(t, strings.Join(func() []string {
		var armed []string
		for _, p := range points {
			armed = append(armed, p+"=kill*1")
		}
		return armed
	}(), ","))
	for _, fp := range points {
		switch fp {
		case "create/after-database":
			go victim.do(t, "POST", "/v1/tenants?wait=60s", map[string]any{"id": "two-b", "shard": "s1"})
		case "suspend/after-disable-login":
			go victim.do(t, "POST", "/v1/tenants/two-a/suspend?wait=60s", nil)
		case "move/after-flip":
			go victim.do(t, "POST", "/v1/tenants/two-a/move?wait=60s", map[string]any{"shard": "s1"})
		}
		victim.died(t, fp)
		switch fp {
		case "create/after-database":
			require.Equal(t, "succeeded", f.ended(t, "two-b"))
			state, _ := tenantState(t, survivor, "two-b")
			require.Equal(t, "active", state)
		case "suspend/after-disable-login":
			require.Equal(t, "succeeded", f.ended(t, "two-a"))
			state, _ := tenantState(t, survivor, "two-a")
			require.Equal(t, "suspended", state)
			survivor.must(t, "POST", "/v1/tenants/two-a/resume?wait=60s", nil, 200)
		case "move/after-flip":
			require.Equal(t, "succeeded", f.ended(t, "two-a"))
			_, shard := tenantState(t, survivor, "two-a")
			require.Equal(t, "s1", shard)
			require.Equal(t, rows, survivor.count(t, "two-a"))
		}
		victim = f.start(t, strings.Join(func() []string {
			var armed []string
			for _, p := range points {
				armed = append(armed, p+"=kill*1")
			}
			return armed
		}(), ","))
	}
	require.Empty(t, f.orphans(t))
	report := survivor.must(t, "GET", "/v1/check", nil, 200)
	require.Equal(t, true, report["clean"], "%v", report["findings"])
}

// A cancel, through the API and the CLI, undoes an operation before its
// pivot (a create slowed by a failpoint leaves nothing behind) and is
// refused after it.
func TestCancelOperation(t *testing.T) {
	t.Parallel()
	f := newCrashFleet(t)
	s := f.start(t, "create/before-activate=sleep(20s)*1")
	f.addShards(t, s)
	code, out := s.do(t, "POST", "/v1/tenants?wait=1s", map[string]any{"id": "cancelled", "shard": "s0"})
	require.Equal(t, 202, code, "%v", out)
	opID, _ := out["id"].(string)
	require.NotEmpty(t, opID, "%v", out)
	got, err := runSilo(t, f.ctx, "", "operation", "cancel", opID, "--url", s.url, "--token", crashToken)
	require.NoError(t, err, got)
	require.Equal(t, "failed", f.ended(t, "cancelled"))
	op := s.must(t, "GET", "/v1/operations/"+opID, nil, 200)
	require.Contains(t, op["error"], "cancelled by")
	code, _ = s.do(t, "GET", "/v1/tenants/cancelled", nil)
	require.Equal(t, 404, code, "the create left nothing")
	require.Empty(t, f.orphans(t))

	createTenant(t, s, "done", "s0")
	doneID, _, _ := f.lastOperation(t, "done")
	op = s.must(t, "POST", "/v1/operations/"+doneID+"/cancel", nil, 200)
	require.Equal(t, "succeeded", op["state"], "a finished operation is answered as it is")
	code, out = s.do(t, "POST", "/v1/operations/00000000-0000-4000-8000-000000000000/cancel", nil)
	require.Equal(t, 404, code, "%v", out)
	var audits int
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT count(*) FROM audit_log WHERE action = 'operation.cancel'`).Scan(&audits))
	require.GreaterOrEqual(t, audits, 2)
}

// A migration run on two servers, one killed mid-run: the other finishes
// it, every tenant at the target once.
func TestCrashTwoServersMigration(t *testing.T) {
	t.Parallel()
	f := newCrashFleet(t)
	survivor := f.start(t, "")
	f.addShards(t, survivor)
	var tenants []string
	for i := range 8 {
		id := fmt.Sprintf("two-m-%d", i)
		createTenant(t, survivor, id, fmt.Sprintf("s%d", i%2))
		tenants = append(tenants, id)
	}
	// Each tenant's migration takes a moment, so the kill lands mid-run.
	require.NoError(t, os.WriteFile(filepath.Join(f.files, "00002_slow.sql"),
		[]byte("-- +goose Up\nSELECT pg_sleep(0.3);\nALTER TABLE notes ADD COLUMN slow int;\n\n-- +goose Down\nALTER TABLE notes DROP COLUMN slow;\n"), 0o644))
	victim := f.start(t, "")
	victim.must(t, "POST", "/v1/migrations/runs", map[string]any{}, 201, 202)
	require.Eventually(t, func() bool {
		var done int
		require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT count(*) FROM migration_tenants WHERE state = 'done'`).Scan(&done))
		return done >= 1
	}, time.Minute, 20*time.Millisecond)
	victim.kill()
	deadline := time.Now().Add(recoverWithin)
	var id, state string
	for {
		id, state = f.lastRun(t)
		if state == "succeeded" || state == "failed" || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.Equal(t, "succeeded", state, "run %s", id)
	for _, tn := range tenants {
		var v int64
		require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT schema_version FROM tenants WHERE id = $1`, tn).Scan(&v))
		require.EqualValues(t, 2, v, tn)
	}
	report := survivor.must(t, "GET", "/v1/check", nil, 200)
	require.Equal(t, true, report["clean"], "%v", report["findings"])
}

// SIGTERM in the middle of a long step: the server stops within its
// shutdown timeout (10 s here, the step cut short and recorded as still
// running, not failed), and a new server finishes the operation.
func TestShutdownMidStep(t *testing.T) {
	t.Parallel()
	f := newCrashFleet(t)
	s := f.start(t, "create/before-activate=sleep(120s)*1")
	f.addShards(t, s)
	code, _ := s.do(t, "POST", "/v1/tenants?wait=1s", map[string]any{"id": "stopped", "shard": "s0"})
	require.Equal(t, 202, code)
	require.Eventually(t, func() bool { return strings.Contains(s.stderr.String(), `"msg":"failpoint fired"`) },
		time.Minute, 20*time.Millisecond, "the step is under way")
	took := s.stop(t)
	require.Less(t, took, 30*time.Second)
	require.Contains(t, s.stderr.String(), "operation interrupted at a step boundary")
	_, state, _ := f.lastOperation(t, "stopped")
	require.Equal(t, "running", state, "cut short, not failed")
	next := f.start(t, "")
	require.Equal(t, "succeeded", f.ended(t, "stopped"))
	st, _ := tenantState(t, next, "stopped")
	require.Equal(t, "active", st)
}
