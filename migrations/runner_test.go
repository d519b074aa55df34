package migrations_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/shardmap"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// newDialer returns the dialer the provisioner of these tests would make.
func newDialer(t *testing.T, store *shardmap.Store) *shardmap.Dialer {
	t.Helper()
	sealer, err := shardmap.NewSealer(testKey)
	require.NoError(t, err)
	d, err := shardmap.NewDialer(shardmap.DialerConfig{Store: store, Sealer: sealer, ConnectTimeout: 2 * time.Second})
	require.NoError(t, err)
	return d
}

// server is one `silo serve`'s provisioner and runner.
type server struct {
	eng    *engine.Engine
	prov   *provisioner.Provisioner
	runner *migrations.Runner
}

type runnerBundle struct {
	ctx   context.Context
	pool  *pgxpool.Pool
	store *shardmap.Store
	dir   string // the tenant migration directory
	fleet *pgtest.Fleet
	dsns  map[string]func(db string) string // by shard
	log   *slog.Logger
	start func(t *testing.T) *server
}

func setupRunner(t *testing.T) (*server, *runnerBundle) {
	t.Helper()
	return setupTracedRunner(t, nil)
}

// setupTracedRunner is setupRunner with servers whose engine and runner
// make spans with tp (none when nil).
func setupTracedRunner(t *testing.T, tp trace.TracerProvider) (*server, *runnerBundle) {
	t.Helper()
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	ctx = silo.WithActor(ctx, silo.Actor{Name: "tester"})
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	pool, store := catalogtest.New(t, log)
	b := &runnerBundle{ctx: ctx, pool: pool, store: store, fleet: fleet, log: log, dir: t.TempDir(), dsns: map[string]func(string) string{}}
	for i, name := range []string{"a", "b"} {
		_, err := store.CreateShard(ctx, silo.Shard{Name: name, DSN: fleet.Shards[i].DSN("postgres")})
		require.NoError(t, err)
		b.dsns[name] = fleet.Shards[i].DSN
	}
	first, err := os.ReadFile("tenant/00001_notes.sql")
	require.NoError(t, err)
	writeMigration(t, b.dir, "00001_notes.sql", string(first))
	files := os.DirFS(b.dir)
	top := t // servers live as long as the test, not one step of it
	b.start = func(t *testing.T) *server {
		s := &server{}
		var err error
		eng, err := engine.New(engine.Config{Catalog: pool, Store: store, Logger: log, RecoveryDelay: time.Second, TracerProvider: tp})
		require.NoError(t, err)
		s.eng = eng
		s.prov, err = provisioner.New(provisioner.Config{
			Catalog: pool, Store: store, Engine: eng, SecretKey: testKey, TenantMigrations: files, Logger: log,
			WarmPoolSize: -1, MaintenanceInterval: time.Hour, ConnectTimeout: 2 * time.Second,
		})
		require.NoError(t, err)
		s.runner, err = migrations.NewRunner(migrations.Config{
			Catalog: pool, Store: store, Engine: eng, Dialer: newDialer(t, store), Files: files, Workers: 4,
			ConnectTimeout: 2 * time.Second, Logger: log, Templates: s.prov, TracerProvider: tp,
		})
		require.NoError(t, err)
		require.NoError(t, eng.Start(ctx))
		top.Cleanup(func() { s.stop(top) })
		return s
	}
	return b.start(t), b
}

func (s *server) stop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if s.prov != nil {
		require.NoError(t, s.eng.Stop(ctx))
		require.NoError(t, s.prov.Stop(ctx))
		s.prov = nil
	}
}

func writeMigration(t *testing.T, dir, name, text string) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644))
}

// waitRun waits for a run to end and returns it.
func waitRun(t *testing.T, ctx context.Context, r *migrations.Runner, id string) *silo.MigrationRun {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		run, err := r.Run(ctx, id)
		require.NoError(t, err)
		if !run.Active() {
			return run
		}
		require.True(t, time.Now().Before(deadline), "run %s still %s: %+v", id, run.State, run)
		time.Sleep(50 * time.Millisecond)
	}
}

// db is the name of a tenant's database, from the catalog.
func (b *runnerBundle) db(t *testing.T, id string) string {
	t.Helper()
	tn, err := b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	return tn.Database
}

// admin runs sql on a tenant's (or any) database as the shard's admin.
func (b *runnerBundle) admin(t *testing.T, shard, db, sql string) {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.dsns[shard](db))
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	_, err = conn.Exec(b.ctx, sql)
	require.NoError(t, err)
}

// versions returns each tenant's version per the catalog and per its own
// database, which must agree.
func (b *runnerBundle) versions(t *testing.T, ids []string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, id := range ids {
		tn, err := b.store.GetTenant(b.ctx, id)
		require.NoError(t, err)
		conn, err := pgx.Connect(b.ctx, b.dsns[tn.Shard](tn.Database))
		require.NoError(t, err)
		v, err := migrations.TenantVersion(b.ctx, conn)
		conn.Close(b.ctx)
		require.NoError(t, err)
		require.Equal(t, v, tn.SchemaVersion, "tenant %s: the catalog's version is its database's", id)
		out[id] = v
	}
	return out
}

func (b *runnerBundle) create(t *testing.T, s *server, id, shard string) *silo.Tenant {
	t.Helper()
	res, err := s.prov.Create(b.ctx, provisioner.CreateRequest{ID: id, Shard: shard}, 30*time.Second)
	require.NoError(t, err)
	require.NotNil(t, res.Tenant, "created in time")
	return res.Tenant
}

// One fleet, one migration directory, one story: the runner's behaviour
// builds on what the steps before left (templates are per shard, and the
// shards are shared by this package's tests).
func TestRunner(t *testing.T) {
	s, b := setupRunner(t)
	var ids []string
	for _, shard := range []string{"a", "b"} {
		for i := range 5 {
			id := fmt.Sprintf("r%s%d", shard, i)
			b.create(t, s, id, shard)
			ids = append(ids, id)
		}
	}
	all := func(v int64) map[string]int64 {
		m := map[string]int64{}
		for _, id := range ids {
			m[id] = v
		}
		return m
	}
	require.Equal(t, all(1), b.versions(t, ids))

	t.Run("a malformed file is refused before any tenant is touched", func(t *testing.T) {
		writeMigration(t, b.dir, "00002_bad.sql", "CREATE TABLE widgets (id int);\n")
		_, err := s.runner.StartRun(b.ctx, migrations.RunOptions{})
		require.Equal(t, silo.EINVALID, silo.ErrorCode(err), "%v", err)
		require.Contains(t, silo.ErrorMessage(err), "00002_bad.sql")
		runs, err := s.runner.Runs(b.ctx, 10)
		require.NoError(t, err)
		require.Empty(t, runs)

		// Valid goose, failing SQL: the trial run on a copy of a template.
		writeMigration(t, b.dir, "00002_bad.sql", "-- +goose Up\nCREATE TABLE notes (id int);\n")
		_, err = s.runner.StartRun(b.ctx, migrations.RunOptions{})
		require.Equal(t, silo.EINVALID, silo.ErrorCode(err), "%v", err)
		require.Contains(t, silo.ErrorMessage(err), "no tenant was touched")
		require.Contains(t, silo.ErrorMessage(err), "42P07")
		st, err := s.runner.Status(b.ctx)
		require.NoError(t, err)
		require.EqualValues(t, 1, st.TargetVersion, "the target did not move")
		require.Nil(t, st.Run)
		require.Equal(t, all(1), b.versions(t, ids))
		require.NoError(t, os.Remove(filepath.Join(b.dir, "00002_bad.sql")))
	})

	writeMigration(t, b.dir, "00002_widgets.sql",
		"-- +goose Up\nCREATE TABLE widgets (id bigint PRIMARY KEY, name text NOT NULL);\n-- +goose Down\nDROP TABLE widgets;\n")
	// ra0 is the first canary (shards interleave, ids in order): a table
	// made there beforehand makes its migration fail.
	b.admin(t, "a", b.db(t, "ra0"), "CREATE TABLE widgets (id int)")

	t.Run("a failed canary stops the run before the others", func(t *testing.T) {
		run, err := s.runner.StartRun(b.ctx, migrations.RunOptions{})
		require.NoError(t, err)
		require.Equal(t, 2, run.Canary, "one canary per shard by default")
		run = waitRun(t, b.ctx, s.runner, run.ID)
		require.Equal(t, silo.RunFailed, run.State)
		require.Contains(t, run.Error, "canary")
		require.Equal(t, 10, run.Total)
		require.Equal(t, 1, run.Failed)
		require.Equal(t, 8, run.Skipped, "no tenant past the canaries was touched")
		v := b.versions(t, ids)
		require.EqualValues(t, 1, v["ra0"])
		require.EqualValues(t, 2, v["rb0"], "the other canary")
		for _, id := range ids[1:] {
			if id != "rb0" {
				require.EqualValues(t, 1, v[id], id)
			}
		}
		st, err := s.runner.Status(b.ctx)
		require.NoError(t, err)
		require.Len(t, st.Failures, 1)
		require.Equal(t, "ra0", st.Failures[0].TenantID)
		require.Equal(t, "42P07", st.Failures[0].SQLState)
		require.EqualValues(t, 2, st.TargetVersion)
		require.Equal(t, 9, st.Behind)
	})

	t.Run("continue on error migrates everyone else", func(t *testing.T) {
		none := 0
		run, err := s.runner.StartRun(b.ctx, migrations.RunOptions{Canary: &none, ContinueOnError: true})
		require.NoError(t, err)
		run = waitRun(t, b.ctx, s.runner, run.ID)
		require.Equal(t, silo.RunFailed, run.State)
		require.Equal(t, 9, run.Total, "rb0 is at the target already")
		require.Equal(t, 8, run.Done)
		require.Equal(t, 1, run.Failed)
		want := all(2)
		want["ra0"] = 1
		require.Equal(t, want, b.versions(t, ids))
		st, err := s.runner.Status(b.ctx)
		require.NoError(t, err)
		require.Len(t, st.Failures, 1)
		require.Equal(t, "42P07", st.Failures[0].SQLState)
		require.Equal(t, 1, st.Behind)
		require.Equal(t, map[int64]int{1: 1, 2: 4}, st.Shards[0].Versions)
	})

	t.Run("once fixed, a re-run finishes the tenant left behind", func(t *testing.T) {
		b.admin(t, "a", b.db(t, "ra0"), "DROP TABLE widgets")
		run, err := s.runner.StartRun(b.ctx, migrations.RunOptions{})
		require.NoError(t, err)
		run = waitRun(t, b.ctx, s.runner, run.ID)
		require.Equal(t, silo.RunSucceeded, run.State, run.Error)
		require.Equal(t, 1, run.Total)
		require.Equal(t, all(2), b.versions(t, ids))
		st, err := s.runner.Status(b.ctx)
		require.NoError(t, err)
		require.Empty(t, st.Failures)
		require.Zero(t, st.Behind)
		// Nothing to do: a run with no tenant succeeds at once.
		run, err = s.runner.StartRun(b.ctx, migrations.RunOptions{})
		require.NoError(t, err)
		run = waitRun(t, b.ctx, s.runner, run.ID)
		require.Equal(t, silo.RunSucceeded, run.State)
		require.Zero(t, run.Total)
	})

	t.Run("new tenants are born at the target", func(t *testing.T) {
		tn := b.create(t, s, "rnew", "b")
		require.EqualValues(t, 2, tn.SchemaVersion)
		b.admin(t, "b", b.db(t, "rnew"), "INSERT INTO widgets VALUES (1, 'born current')")
		ids = append(ids, "rnew")
	})

	t.Run("drift shows a tenant changed by hand", func(t *testing.T) {
		rep, err := s.runner.Drift(b.ctx)
		require.NoError(t, err)
		require.Equal(t, len(ids), rep.Checked)
		require.Empty(t, rep.Drifted)
		require.Len(t, rep.Templates, 2)
		require.Equal(t, rep.Templates[0].Fingerprint, rep.Templates[1].Fingerprint, "both templates alike")

		b.admin(t, "a", b.db(t, "ra1"), "CREATE INDEX widgets_name_idx ON widgets (name)")
		b.admin(t, "b", b.db(t, "rb2"), "ALTER TABLE widgets ALTER COLUMN name DROP NOT NULL")
		rep, err = s.runner.Drift(b.ctx)
		require.NoError(t, err)
		require.Len(t, rep.Drifted, 2)
		got := map[string]silo.SchemaDrift{}
		for _, d := range rep.Drifted {
			got[d.TenantID] = d
		}
		require.Empty(t, got["ra1"].Missing)
		require.Len(t, got["ra1"].Extra, 1)
		require.Contains(t, got["ra1"].Extra[0], "widgets_name_idx")
		require.Len(t, got["rb2"].Missing, 1)
		require.Contains(t, got["rb2"].Missing[0], "NOT NULL")
		b.admin(t, "a", b.db(t, "ra1"), "DROP INDEX widgets_name_idx")
		b.admin(t, "b", b.db(t, "rb2"), "ALTER TABLE widgets ALTER COLUMN name SET NOT NULL")
	})

	writeMigration(t, b.dir, "00003_slow.sql",
		"-- +goose Up\nSELECT pg_sleep(0.2);\nALTER TABLE widgets ADD COLUMN color text;\n-- +goose Down\nALTER TABLE widgets DROP COLUMN color;\n")

	t.Run("the concurrency limits hold", func(t *testing.T) {
		none := 0
		run, err := s.runner.StartRun(b.ctx, migrations.RunOptions{Concurrency: 3, PerShard: 1, Canary: &none})
		require.NoError(t, err)
		maxShard, maxTotal := 0, 0
		for {
			rows, err := b.pool.Query(b.ctx, `
				SELECT shard, count(*) FROM migration_tenants WHERE run_id = $1 AND state = 'running' GROUP BY shard`, run.ID)
			require.NoError(t, err)
			total := 0
			for rows.Next() {
				var shard string
				var n int
				require.NoError(t, rows.Scan(&shard, &n))
				maxShard, total = max(maxShard, n), total+n
			}
			require.NoError(t, rows.Err())
			maxTotal = max(maxTotal, total)
			run, err = s.runner.Run(b.ctx, run.ID)
			require.NoError(t, err)
			if !run.Active() {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		require.Equal(t, silo.RunSucceeded, run.State, run.Error)
		require.Equal(t, 1, maxShard, "one tenant at a time per shard")
		require.LessOrEqual(t, maxTotal, 2, "two shards, one each")
		require.Equal(t, all(3), b.versions(t, ids))
	})

	writeMigration(t, b.dir, "00004_gadgets.sql", "-- +goose Up\nSELECT pg_sleep(0.1);\nCREATE TABLE gadgets (id int);\n")

	t.Run("a second run is refused while one is in progress", func(t *testing.T) {
		none := 0
		var wg sync.WaitGroup
		runs := make([]*silo.MigrationRun, 2)
		errs := make([]error, 2)
		for i := range 2 {
			wg.Go(func() {
				runs[i], errs[i] = s.runner.StartRun(b.ctx, migrations.RunOptions{Concurrency: 1, Canary: &none})
			})
		}
		wg.Wait()
		started := 0
		var id string
		for i := range 2 {
			if errs[i] == nil {
				started++
				id = runs[i].ID
			} else {
				require.Equal(t, silo.ECONFLICT, silo.ErrorCode(errs[i]), "%v", errs[i])
			}
		}
		require.Equal(t, 1, started, "exactly one run")
		_, err := s.runner.StartRun(b.ctx, migrations.RunOptions{})
		require.Equal(t, silo.ECONFLICT, silo.ErrorCode(err))
		run := waitRun(t, b.ctx, s.runner, id)
		require.Equal(t, silo.RunSucceeded, run.State, run.Error)
		require.Equal(t, all(4), b.versions(t, ids))
	})

	writeMigration(t, b.dir, "00005_sprockets.sql",
		"-- +goose Up\nSELECT pg_sleep(0.15);\nCREATE TABLE sprockets (id int);\n-- +goose Down\nDROP TABLE sprockets;\n")

	t.Run("a run resumes on another server when its server stops", func(t *testing.T) {
		none := 0
		run, err := s.runner.StartRun(b.ctx, migrations.RunOptions{Concurrency: 2, PerShard: 1, Canary: &none})
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			r, err := s.runner.Run(b.ctx, run.ID)
			return err == nil && r.Done >= 2
		}, time.Minute, 10*time.Millisecond)
		s.stop(t) // what it was migrating, it finishes; the rest waits in the queue
		mid, err := s.runner.Run(b.ctx, run.ID)
		require.NoError(t, err)
		require.True(t, mid.Active(), "stopped mid-run: %+v", mid)
		require.Less(t, mid.Done, mid.Total)

		s = b.start(t)
		run = waitRun(t, b.ctx, s.runner, run.ID)
		require.Equal(t, silo.RunSucceeded, run.State, run.Error)
		require.Equal(t, all(5), b.versions(t, ids))
		// Nothing was applied twice.
		for _, id := range ids {
			tn, err := b.store.GetTenant(b.ctx, id)
			require.NoError(t, err)
			conn, err := pgx.Connect(b.ctx, b.dsns[tn.Shard](tn.Database))
			require.NoError(t, err)
			var n int
			require.NoError(t, conn.QueryRow(b.ctx, `SELECT count(*) FROM silo_schema_migrations WHERE version_id = 5`).Scan(&n))
			conn.Close(b.ctx)
			require.Equal(t, 1, n, id)
		}
	})

	t.Run("down needs down sections", func(t *testing.T) {
		three := int64(3)
		_, err := s.runner.StartRun(b.ctx, migrations.RunOptions{Direction: silo.MigrateDown, To: &three})
		require.Equal(t, silo.EINVALID, silo.ErrorCode(err), "%v", err)
		require.Contains(t, silo.ErrorMessage(err), "00004_gadgets.sql")

		four := int64(4)
		run, err := s.runner.StartRun(b.ctx, migrations.RunOptions{Direction: silo.MigrateDown, To: &four})
		require.NoError(t, err)
		run = waitRun(t, b.ctx, s.runner, run.ID)
		require.Equal(t, silo.RunSucceeded, run.State, run.Error)
		require.Equal(t, all(4), b.versions(t, ids))
		tn := b.create(t, s, "rdown", "a")
		require.EqualValues(t, 4, tn.SchemaVersion, "born at the new target")
		ids = append(ids, "rdown")

		five := int64(5)
		run, err = s.runner.StartRun(b.ctx, migrations.RunOptions{To: &five})
		require.NoError(t, err)
		run = waitRun(t, b.ctx, s.runner, run.ID)
		require.Equal(t, silo.RunSucceeded, run.State, run.Error)
		require.Equal(t, all(5), b.versions(t, ids))
	})

	t.Run("a shard down fails its tenants fast; the others finish", func(t *testing.T) {
		dir, err := os.MkdirTemp("", "runner-shard-")
		require.NoError(t, err)
		require.NoError(t, os.Chmod(dir, 0o755))
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		cfg := pgcluster.Config{Dir: filepath.Join(dir, "c"), Fast: true}
		c, err := pgcluster.Start(b.ctx, cfg)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Stop(context.Background()) })
		_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: "c", DSN: c.DSN("postgres")})
		require.NoError(t, err)
		b.dsns["c"] = c.DSN
		onC := []string{"rc0", "rc1", "rc2"}
		for _, id := range onC {
			b.create(t, s, id, "c")
		}
		require.NoError(t, c.Stop(b.ctx))

		writeMigration(t, b.dir, "00006_cogs.sql", "-- +goose Up\nCREATE TABLE cogs (id int);\n")
		none := 0
		start := time.Now()
		run, err := s.runner.StartRun(b.ctx, migrations.RunOptions{Canary: &none, ContinueOnError: true})
		require.NoError(t, err)
		run = waitRun(t, b.ctx, s.runner, run.ID)
		require.Less(t, time.Since(start), 30*time.Second)
		require.Equal(t, silo.RunFailed, run.State)
		require.Equal(t, len(onC), run.Failed)
		require.Equal(t, all(6), b.versions(t, ids), "the other shards finished")
		st, err := s.runner.Status(b.ctx)
		require.NoError(t, err)
		require.Len(t, st.Failures, len(onC))
		for _, f := range st.Failures {
			require.Equal(t, "c", f.Shard)
		}

		c, err = pgcluster.Start(b.ctx, cfg)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Stop(context.Background()) })
		run, err = s.runner.StartRun(b.ctx, migrations.RunOptions{})
		require.NoError(t, err)
		run = waitRun(t, b.ctx, s.runner, run.ID)
		require.Equal(t, silo.RunSucceeded, run.State, run.Error)
		require.Equal(t, len(onC), run.Total)
		v := b.versions(t, onC)
		for _, id := range onC {
			require.EqualValues(t, 6, v[id])
		}
		tn := b.create(t, s, "rc-new", "c")
		require.EqualValues(t, 6, tn.SchemaVersion, "its template caught up")
	})

	t.Run("bad options change nothing", func(t *testing.T) {
		before, err := s.runner.Runs(b.ctx, 100)
		require.NoError(t, err)
		huge, neg := 1_000_000, int64(-1)
		seven := int64(7)
		for _, o := range []migrations.RunOptions{
			{Direction: "sideways"},
			{Concurrency: -1},
			{PerShard: 1000},
			{Canary: &huge},
			{To: &neg},
			{To: &seven},
			{Direction: silo.MigrateDown},
		} {
			_, err := s.runner.StartRun(b.ctx, o)
			require.Equal(t, silo.EINVALID, silo.ErrorCode(err), "%+v: %v", o, err)
		}
		_, err = s.runner.Run(b.ctx, "not-a-uuid")
		require.Equal(t, silo.EINVALID, silo.ErrorCode(err))
		_, err = s.runner.Run(b.ctx, "00000000-0000-4000-8000-000000000000")
		require.Equal(t, silo.ENOTFOUND, silo.ErrorCode(err))
		after, err := s.runner.Runs(b.ctx, 100)
		require.NoError(t, err)
		require.Equal(t, len(before), len(after))
		require.False(t, strings.Contains(fmt.Sprint(after), "sideways"))
	})
}

// Servers creating their first tenants at once agree on the target version,
// and none fails: the row is made by whoever comes first.
func TestTargetVersionConcurrently(t *testing.T) {
	t.Parallel()
	pgtest.Start(t)
	pool, _ := catalogtest.New(t, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 16
	got := make([]int64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			got[i], errs[i] = migrations.TargetVersion(ctx, pool, func() (int64, error) { return int64(7 + i%2), nil })
		})
	}
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		require.Equal(t, got[0], got[i])
	}
	v, err := migrations.TargetVersion(ctx, pool, func() (int64, error) { return 99, nil })
	require.NoError(t, err)
	require.Equal(t, got[0], v, "set once")
}

// Stopping a server mid-run leaves no goroutine of the runner's, the
// engine's or the provisioner's behind. Not parallel: it counts goroutines.
func TestRunnerStopLeaksNothing(t *testing.T) {
	pgtest.Start(t)
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) }) // last: after the catalog pool closes
	s, b := setupRunner(t)
	// A shard of its own: the shared ones' templates are at other tests'
	// versions.
	b.ownShard(t, "leak")
	for _, shared := range []string{"a", "b"} {
		_, err := b.store.SetShardState(b.ctx, shared, silo.ShardDisabled)
		require.NoError(t, err)
	}
	for i := range 4 {
		b.create(t, s, fmt.Sprintf("leak-%d", i), "leak")
	}
	writeMigration(t, b.dir, "00002_leak.sql", "-- +goose Up\nALTER TABLE notes ADD COLUMN leak int;\n\n-- +goose Down\nALTER TABLE notes DROP COLUMN leak;\n")
	run, err := s.runner.StartRun(b.ctx, migrations.RunOptions{})
	require.NoError(t, err)
	waitRun(t, b.ctx, s.runner, run.ID)
	s.stop(t)
}
