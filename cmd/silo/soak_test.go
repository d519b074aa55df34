package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/internal/pgtest"
)

// TestSoak runs two servers under mixed load for SILO_SOAK (a duration,
// such as 20m; scripts/soak.sh sets it): writes, reads, creates,
// suspends, resumes, purges, moves and migration runs, while one shard is
// frozen and thawed and one server is killed and restarted. At the end
// every operation has ended, silo check is clean, and every acknowledged
// write is present. It prints a summary for docs/benchmarks.md.
func TestSoak(t *testing.T) {
	spec := os.Getenv("SILO_SOAK")
	if spec == "" {
		t.Skip("SILO_SOAK=DURATION runs the soak (scripts/soak.sh)")
	}
	duration, err := time.ParseDuration(spec)
	require.NoError(t, err)
	f := newCrashFleet(t)
	ctx, cancel := context.WithTimeout(context.Background(), duration+10*time.Minute)
	t.Cleanup(cancel)
	f.ctx = ctx
	servers := [2]atomic.Pointer[server]{}
	a := f.start(t, "")
	f.addShards(t, a)
	servers[0].Store(a)
	servers[1].Store(f.start(t, ""))
	pick := func() *server { return servers[rand.IntN(2)].Load() }

	var stats struct {
		sync.Mutex
		requests map[string]int // "create 201", "write 503 EUNAVAILABLE", ...
	}
	stats.requests = map[string]int{}
	note := func(what string, code int, out map[string]any) {
		key := fmt.Sprintf("%s %d", what, code)
		if c, ok := out["code"].(string); ok && code >= 400 {
			key += " " + c
		}
		stats.Lock()
		stats.requests[key]++
		stats.Unlock()
	}

	// Durable tenants take the writes; their acknowledged rows must all be
	// there at the end.
	durable := []string{"soak-0", "soak-1", "soak-2", "soak-3", "soak-4", "soak-5"}
	for i, id := range durable {
		createTenant(t, a, id, fmt.Sprintf("s%d", i%2))
	}
	acked := map[string][]string{}
	var ackMu sync.Mutex
	var writes, lost atomic.Int64

	deadline := time.Now().Add(duration)
	var wg sync.WaitGroup
	loop := func(name string, pause time.Duration, body func(i int)) {
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline); i++ {
				body(i)
				time.Sleep(pause)
			}
		})
	}
	// Writers: one row per request, each acknowledged or not.
	for w := range 3 {
		loop("write", 5*time.Millisecond, func(i int) {
			id := durable[rand.IntN(len(durable))]
			title := fmt.Sprintf("w%d-%d", w, i)
			code, out := pick().do(t, "POST", "/v1/tenants/"+id+"/query",
				map[string]any{"sql": "INSERT INTO notes (title) VALUES ($1)", "params": []any{title}})
			note("write", code, out)
			if code == 200 {
				writes.Add(1)
				ackMu.Lock()
				acked[id] = append(acked[id], title)
				ackMu.Unlock()
			}
		})
	}
	loop("read", 20*time.Millisecond, func(int) {
		code, out := pick().do(t, "POST", "/v1/tenants/"+durable[rand.IntN(len(durable))]+"/query",
			map[string]any{"sql": "SELECT count(*) FROM notes"})
		note("read", code, out)
	})
	// Lifecycle: tenants of their own, created, suspended, resumed, purged.
	loop("lifecycle", 200*time.Millisecond, func(i int) {
		id := fmt.Sprintf("life-%d", i)
		code, out := pick().do(t, "POST", "/v1/tenants?wait=60s", map[string]any{"id": id})
		note("create", code, out)
		if code != 201 {
			return
		}
		for _, step := range []struct{ what, method, path string }{
			{"suspend", "POST", "/suspend"}, {"resume", "POST", "/resume"}, {"purge", "DELETE", "?purge=true"},
		} {
			sep := "?"
			if strings.Contains(step.path, "?") {
				sep = "&"
			}
			code, out := pick().do(t, step.method, "/v1/tenants/"+id+step.path+sep+"wait=60s", nil)
			note(step.what, code, out)
		}
	})
	// Moves: a durable tenant to the other shard, every few seconds.
	if hasPgDumpFor(t) {
		loop("move", 5*time.Second, func(int) {
			id := durable[rand.IntN(len(durable))]
			code, out := pick().do(t, "GET", "/v1/tenants/"+id, nil)
			if code != 200 {
				return
			}
			to := "s0"
			if out["shard"] == "s0" {
				to = "s1"
			}
			code, out = pick().do(t, "POST", "/v1/tenants/"+id+"/move?wait=60s", map[string]any{"shard": to})
			note("move", code, out)
		})
	}
	// Migration runs: a new column every few minutes.
	version := 1
	loop("migrate", duration/4, func(int) {
		version++
		require.NoError(t, os.WriteFile(filepath.Join(f.files, fmt.Sprintf("%05d_soak.sql", version)),
			fmt.Appendf(nil, "-- +goose Up\nALTER TABLE notes ADD COLUMN soak_%d int;\n\n-- +goose Down\nALTER TABLE notes DROP COLUMN soak_%d;\n", version, version), 0o644))
		code, out := pick().do(t, "POST", "/v1/migrations/runs", map[string]any{})
		note("migrate", code, out)
	})
	// Chaos: a shard frozen and thawed at a third; a server killed and
	// restarted at half.
	wg.Go(func() {
		time.Sleep(duration / 3)
		require.NoError(t, f.shards[1].Pause())
		t.Logf("%s: shard s1 frozen", time.Now().Format(time.TimeOnly))
		time.Sleep(15 * time.Second)
		require.NoError(t, f.shards[1].Resume())
		t.Logf("%s: shard s1 thawed", time.Now().Format(time.TimeOnly))
		time.Sleep(duration/2 - duration/3)
		servers[1].Load().kill()
		t.Logf("%s: server B killed", time.Now().Format(time.TimeOnly))
		time.Sleep(5 * time.Second)
		servers[1].Store(f.start(t, ""))
		t.Logf("%s: server B restarted", time.Now().Format(time.TimeOnly))
	})
	wg.Wait()

	// Everything ends: no operation or run left running.
	s := servers[0].Load()
	require.Eventually(t, func() bool {
		var running int
		require.NoError(t, f.pool.QueryRow(f.ctx, `
			SELECT (SELECT count(*) FROM operations WHERE state = 'running')
			     + (SELECT count(*) FROM migration_runs WHERE state IN ('preparing', 'canary', 'running'))`).Scan(&running))
		return running == 0
	}, 2*time.Minute, time.Second, "operations and runs end")

	// Every acknowledged write is there, read straight from its database.
	for _, id := range durable {
		var shard, db string
		require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT shard, database_name FROM tenants WHERE id = $1`, id).Scan(&shard, &db))
		c := f.shards[0]
		if shard == "s1" {
			c = f.shards[1]
		}
		conn, err := pgx.Connect(f.ctx, c.DSN(db))
		require.NoError(t, err)
		rows, err := conn.Query(f.ctx, `SELECT title FROM notes`)
		require.NoError(t, err)
		titles, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		conn.Close(f.ctx)
		have := map[string]bool{}
		for _, ti := range titles {
			have[ti] = true
		}
		for _, ti := range acked[id] {
			if !have[ti] {
				lost.Add(1)
			}
		}
	}
	report := s.must(t, "GET", "/v1/check", nil, 200)

	// The summary.
	rows, err := f.pool.Query(f.ctx, `SELECT kind || ' ' || state, count(*)::int FROM operations GROUP BY 1 ORDER BY 1`)
	require.NoError(t, err)
	ops, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct {
		What string
		N    int
	}])
	require.NoError(t, err)
	var runs []string
	rows, err = f.pool.Query(f.ctx, `SELECT state || ' ' || count(*) FROM migration_runs GROUP BY state ORDER BY state`)
	require.NoError(t, err)
	runs, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	rows, err = f.pool.Query(f.ctx, `
		SELECT kind || ': ' || left(error, 160) || ' (' || count(*) || ')' FROM operations
		WHERE state = 'failed' GROUP BY kind, left(error, 160) ORDER BY count(*) DESC`)
	require.NoError(t, err)
	failures, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	var keys []string
	for k := range stats.requests {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "soak: %s, two servers, PostgreSQL %d\n", duration, pgtest.Start(t).Major)
	fmt.Fprintf(&b, "operations (kind, end state, count):\n")
	for _, o := range ops {
		fmt.Fprintf(&b, "  %-22s %6d\n", o.What, o.N)
	}
	if len(failures) > 0 {
		fmt.Fprintf(&b, "failed operations, why:\n")
		for _, f := range failures {
			fmt.Fprintf(&b, "  %s\n", f)
		}
	}
	fmt.Fprintf(&b, "migration runs: %s\n", strings.Join(runs, ", "))
	fmt.Fprintf(&b, "requests (what, status, code):\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "  %-34s %7d\n", k, stats.requests[k])
	}
	fmt.Fprintf(&b, "writes acknowledged: %d, lost: %d\n", writes.Load(), lost.Load())
	fmt.Fprintf(&b, "silo check: clean=%v findings=%v\n", report["clean"], report["findings"])
	t.Log("\n" + b.String())
	if out := os.Getenv("SILO_SOAK_REPORT"); out != "" {
		require.NoError(t, os.WriteFile(out, []byte(b.String()), 0o644))
	}
	require.Zero(t, lost.Load(), "acknowledged writes lost")
	require.Equal(t, true, report["clean"], "%v", report["findings"])
}
