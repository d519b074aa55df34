package reconcile_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/reconcile"
	"github.com/silo-db/silo/shardmap"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var testKey = []byte("0123456789abcdef0123456789abcdef")

type bundle struct {
	ctx      context.Context
	pool     *pgxpool.Pool
	store    *shardmap.Store
	sealer   *shardmap.Sealer
	prov     *provisioner.Provisioner
	checker  *reconcile.Checker
	registry *prometheus.Registry
	shards   map[string]*pgcluster.Cluster
}

// setup returns a checker over a fresh catalog and two shard clusters of
// the test's own, a and b: a check reads whole servers, so the test binary's
// shared shards, which other tests fill, would not do. The provisioner
// makes tenants but is not started: no background job (purge sweep, warm
// pool upkeep) changes the shards under the test.
func setup(t *testing.T) *bundle {
	t.Helper()
	pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	dir, err := os.MkdirTemp("", "reconcile-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755)) // the postgres user runs the clusters as root
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	clusters, err := pgcluster.StartAll(ctx,
		pgcluster.Config{Dir: filepath.Join(dir, "a"), Fast: true},
		pgcluster.Config{Dir: filepath.Join(dir, "b"), Fast: true})
	for _, c := range clusters {
		if c != nil {
			t.Cleanup(func() { _ = c.Stop(context.Background()) })
		}
	}
	require.NoError(t, err)

	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	pool, store := catalogtest.New(t, log)
	b := &bundle{pool: pool, store: store, registry: prometheus.NewRegistry(),
		shards: map[string]*pgcluster.Cluster{"a": clusters[0], "b": clusters[1]}}
	b.ctx = silo.WithActor(ctx, silo.Actor{Name: "tester"})
	for _, name := range []string{"a", "b"} {
		_, err := store.CreateShard(b.ctx, silo.Shard{Name: name, DSN: b.shards[name].DSN("postgres"), Region: "eu"})
		require.NoError(t, err)
	}
	b.sealer, err = shardmap.NewSealer(testKey)
	require.NoError(t, err)
	dialer, err := shardmap.NewDialer(shardmap.DialerConfig{Store: store, Sealer: b.sealer, Logger: log})
	require.NoError(t, err)
	// The engine runs the creates but is not started: no recovery sweep
	// takes over the operations the tests record by hand.
	eng := catalogtest.NewEngine(t, pool, store, log, engine.Config{})
	b.prov, err = provisioner.New(provisioner.Config{Catalog: pool, Store: store, Engine: eng, Dialer: dialer, SecretKey: testKey,
		Logger: log, WarmPoolSize: -1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.prov.Stop(context.Background()) })
	b.checker, err = reconcile.New(reconcile.Config{Store: store, Dialer: dialer, Dropper: b.prov, Logger: log, Registry: b.registry})
	require.NoError(t, err)
	return b
}

func (b *bundle) create(t *testing.T, id, shard string) *silo.Tenant {
	t.Helper()
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: id, Shard: shard}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.TenantActive, res.Tenant.State)
	return res.Tenant
}

// exec runs statements on database db of a shard as its superuser.
func (b *bundle) exec(t *testing.T, shard, db string, stmts ...string) {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.shards[shard].DSN(db))
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	for _, s := range stmts {
		_, err := conn.Exec(b.ctx, s)
		require.NoError(t, err, s)
	}
}

// asTenant runs statements in the tenant's database as its own role.
func (b *bundle) asTenant(t *testing.T, tn *silo.Tenant, stmts ...string) {
	t.Helper()
	sealed, err := b.store.TenantSecret(b.ctx, tn.ID)
	require.NoError(t, err)
	pw, err := b.sealer.Open(sealed, tn.ID)
	require.NoError(t, err)
	conn, err := pgx.Connect(b.ctx, fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable",
		tn.Database, pw, b.shards[tn.Shard].Port(), tn.Database))
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	for _, s := range stmts {
		_, err := conn.Exec(b.ctx, s)
		require.NoError(t, err, s)
	}
}

// has reports whether a shard has a database, role or replication slot.
func (b *bundle) has(t *testing.T, shard, what, name string) bool {
	t.Helper()
	q := map[string]string{
		"database": `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`,
		"role":     `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`,
		"slot":     `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`,
		"sub":      `SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)`,
	}[what]
	conn, err := pgx.Connect(b.ctx, b.shards[shard].DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	var ok bool
	require.NoError(t, conn.QueryRow(b.ctx, q, name).Scan(&ok))
	return ok
}

func (b *bundle) check(t *testing.T) *reconcile.Report {
	t.Helper()
	rep, err := b.checker.Check(b.ctx)
	require.NoError(t, err)
	return rep
}

// item is a finding without its message, to compare sets of findings.
type item struct {
	Kind              reconcile.Kind
	Shard, Object, DB string
	Tenant            string
	Repairable        bool
}

func items(rep *reconcile.Report) []item {
	out := []item{}
	for _, f := range rep.Findings {
		out = append(out, item{f.Kind, f.Shard, f.Object, f.Database, f.TenantID, f.Repairable})
	}
	return out
}

func sorted(is []item) []item {
	slices.SortFunc(is, func(a, b item) int {
		return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
	})
	return is
}

// gauge reads silo_check_findings{kind} from the registry.
func (b *bundle) gauge(t *testing.T, kind reconcile.Kind) float64 {
	t.Helper()
	mfs, err := b.registry.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "silo_check_findings" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == string(kind) {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no silo_check_findings{kind=%q}", kind)
	return 0
}

// A fleet with every kind of trouble planted by hand: each is reported,
// repair fixes the safe ones, leaves the rest, and says what it did; a
// shard that cannot be read is reported.
func TestCheckFindsAndRepairs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	acme := b.create(t, "acme", "a")
	globex := b.create(t, "globex", "a")
	b.create(t, "umbrella", "a")
	hooli := b.create(t, "hooli", "b")
	initech := b.create(t, "initech", "b")
	_, err := b.prov.Suspend(b.ctx, "initech", time.Minute)
	require.NoError(t, err)
	_, err = b.prov.Delete(b.ctx, "umbrella", false, time.Minute)
	require.NoError(t, err)
	// A warm unit the catalog lists, and a retired copy not yet due.
	require.NoError(t, b.store.AddWarmDatabase(b.ctx, "a", "silo_warm_listed", 1))
	require.NoError(t, b.store.RetireDatabase(b.ctx, "a", "silo_moved_0000beef_t_keep", "acme", time.Now().Add(time.Hour)))
	b.exec(t, "a", "postgres",
		`CREATE ROLE silo_warm_listed NOLOGIN`, `CREATE DATABASE silo_warm_listed OWNER silo_warm_listed`,
		`CREATE ROLE silo_moved_0000beef_t_keep NOLOGIN`, `CREATE DATABASE silo_moved_0000beef_t_keep`)

	rep := b.check(t)
	require.Empty(t, items(rep), "a fleet as Silo left it is clean: %v", rep.Findings)
	require.True(t, rep.Clean())
	require.Equal(t, 5, rep.Tenants)
	require.Equal(t, 3, rep.VersionsRead, "the suspended and deleted tenants' roles cannot log in")
	require.Len(t, rep.Shards, 2)

	// The trouble.
	stray, lonely := "t_strayaaaaaaaaaaaaaaaaaa", "t_lonelyaaaaaaaaaaaaaaaaa"
	b.exec(t, "a", "postgres",
		`CREATE ROLE `+stray+` LOGIN`, `CREATE DATABASE `+stray+` OWNER `+stray, // a tenant's, say, whose create lost its row
		`CREATE ROLE silo_warm_orphan NOLOGIN`, `CREATE DATABASE silo_warm_orphan OWNER silo_warm_orphan`,
		`CREATE DATABASE `+hooli.Database, // a copy of hooli's database on a shard that is not hooli's
		`CREATE ROLE silo_moved_0badf00d_t_old NOLOGIN`, `CREATE DATABASE silo_moved_0badf00d_t_old`)
	require.NoError(t, b.store.RetireDatabase(b.ctx, "a", "silo_moved_0badf00d_t_old", "acme", time.Now().Add(-time.Minute)))
	b.exec(t, "a", acme.Database, `SELECT pg_create_logical_replication_slot('silo_move_t_ghostslot', 'pgoutput')`)
	b.exec(t, "a", globex.Database, `CREATE PUBLICATION silo_move FOR ALL TABLES`)
	b.asTenant(t, acme, `CREATE MATERIALIZED VIEW note_titles AS SELECT title FROM notes WITH NO DATA`)
	// A publication of that name that the tenant made itself is the
	// tenant's business.
	b.asTenant(t, hooli, `CREATE PUBLICATION silo_move FOR TABLE notes`,
		`INSERT INTO silo_schema_migrations (version_id, is_applied) VALUES (99, true)`)
	b.exec(t, "b", "postgres",
		`CREATE ROLE `+lonely,
		`DROP DATABASE `+initech.Database, // behind the catalog's back
		`CREATE DATABASE silo_check_0123456789ab`,
		`CREATE ROLE silo_sub_t_ghostsub LOGIN`, `GRANT CREATE ON DATABASE `+hooli.Database+` TO silo_sub_t_ghostsub`)
	b.exec(t, "b", hooli.Database, `CREATE SUBSCRIPTION silo_move_t_ghostsub CONNECTION '`+
		fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s", b.shards["a"].Port(), b.shards["a"].User(), b.shards["a"].Password(), globex.Database)+
		`' PUBLICATION silo_move WITH (connect = false)`)

	rep = b.check(t)
	want := []item{
		{reconcile.OrphanSubscription, "b", "silo_move_t_ghostsub", hooli.Database, "", true},
		{reconcile.OrphanSlot, "a", "silo_move_t_ghostslot", acme.Database, "", true},
		{reconcile.OrphanPublication, "a", "silo_move", globex.Database, "globex", true},
		{reconcile.RetiredExpired, "a", "silo_moved_0badf00d_t_old", "", "acme", true},
		{reconcile.OrphanWarmUnit, "a", "silo_warm_orphan", "", "", true},
		{reconcile.OrphanDatabase, "a", stray, "", "", true},
		{reconcile.OrphanDatabase, "a", hooli.Database, "", "", false},
		{reconcile.OrphanDatabase, "b", "silo_check_0123456789ab", "", "", true},
		{reconcile.OrphanRole, "b", lonely, "", "", true},
		{reconcile.OrphanRole, "b", "silo_sub_t_ghostsub", "", "", true},
		{reconcile.MissingDatabase, "b", initech.Database, "", "initech", false},
		{reconcile.VersionMismatch, "b", hooli.Database, "", "hooli", false},
		{reconcile.UnpopulatedMatview, "a", "public.note_titles", acme.Database, "acme", false},
	}
	require.Equal(t, sorted(want), sorted(items(rep)))
	require.False(t, rep.Clean())
	for _, f := range rep.Findings {
		require.NotEmpty(t, f.Message)
		switch f.Object {
		case hooli.Database:
			if f.Kind == reconcile.OrphanDatabase {
				require.Contains(t, f.Message, "tenant hooli on shard b", "says whose name it is")
			} else {
				require.Contains(t, f.Message, "version 99; the catalog says 1")
			}
		case stray:
			require.Contains(t, f.Message, "database and role")
		}
	}
	require.Equal(t, 1.0, b.gauge(t, reconcile.OrphanSlot))
	require.Equal(t, 3.0, b.gauge(t, reconcile.OrphanDatabase))

	repairs, err := b.checker.Repair(b.ctx, rep)
	require.NoError(t, err)
	var repaired []item
	for _, r := range repairs {
		require.Equal(t, reconcile.Repaired, r.Outcome, "%s %s: %s", r.Kind, r.Object, r.Error)
		repaired = append(repaired, item{r.Kind, r.Shard, r.Object, r.Database, r.TenantID, r.Repairable})
	}
	var safe []item
	for _, w := range want {
		if w.Repairable {
			safe = append(safe, w)
		}
	}
	require.Equal(t, sorted(safe), sorted(repaired))
	// In repair order: the subscription before its slot, databases before
	// roles.
	require.Equal(t, reconcile.OrphanSubscription, repairs[0].Kind)
	require.Equal(t, reconcile.OrphanRole, repairs[len(repairs)-1].Kind)

	rep = b.check(t)
	var left []item
	for _, w := range want {
		if !w.Repairable {
			left = append(left, w)
		}
	}
	require.Equal(t, sorted(left), sorted(items(rep)), "what only an operator may fix is left")
	require.Equal(t, 0.0, b.gauge(t, reconcile.OrphanSlot))
	require.Equal(t, 1.0, b.gauge(t, reconcile.OrphanDatabase))

	for _, gone := range []struct{ shard, what, name string }{
		{"a", "database", stray}, {"a", "role", stray}, {"a", "database", "silo_warm_orphan"}, {"a", "role", "silo_warm_orphan"},
		{"a", "database", "silo_moved_0badf00d_t_old"}, {"a", "role", "silo_moved_0badf00d_t_old"},
		{"a", "slot", "silo_move_t_ghostslot"}, {"b", "role", lonely}, {"b", "role", "silo_sub_t_ghostsub"},
		{"b", "database", "silo_check_0123456789ab"}, {"b", "sub", "silo_move_t_ghostsub"},
	} {
		require.False(t, b.has(t, gone.shard, gone.what, gone.name), "%s %s on %s", gone.what, gone.name, gone.shard)
	}
	for _, kept := range []struct{ shard, what, name string }{
		{"a", "database", hooli.Database}, {"b", "database", hooli.Database}, {"b", "role", hooli.Database},
		{"b", "role", initech.Database}, {"a", "database", "silo_warm_listed"}, {"a", "database", "silo_moved_0000beef_t_keep"},
		{"a", "database", acme.Database}, {"a", "database", globex.Database},
	} {
		require.True(t, b.has(t, kept.shard, kept.what, kept.name), "%s %s on %s", kept.what, kept.name, kept.shard)
	}
	var pubs int
	conn, err := pgx.Connect(b.ctx, b.shards["b"].DSN(hooli.Database))
	require.NoError(t, err)
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT count(*) FROM pg_publication WHERE pubname = 'silo_move'`).Scan(&pubs))
	conn.Close(b.ctx)
	require.Equal(t, 1, pubs, "the tenant's own publication is left alone")
	retired, err := b.store.ExpiredRetiredDatabases(b.ctx, time.Now().Add(2*time.Hour), 10)
	require.NoError(t, err)
	require.Len(t, retired, 1, "the expired copy is forgotten, the other kept")
	require.Equal(t, "silo_moved_0000beef_t_keep", retired[0].Name)

	audit, err := b.store.ListAudit(b.ctx, shardmap.AuditFilter{Action: "check.repair"}, silo.Page{})
	require.NoError(t, err)
	require.Len(t, audit.Items, len(safe))
	for _, e := range audit.Items {
		require.Equal(t, silo.AuditResultOK, e.Result)
		require.Equal(t, "tester", e.Actor)
		require.True(t, strings.HasPrefix(e.Target, "shard/"), e.Target)
		require.NotEmpty(t, e.Params["kind"])
	}

	// A report's findings are repaired only when a new check still finds
	// them.
	again, err := b.checker.Repair(b.ctx, &reconcile.Report{Findings: []reconcile.Finding{
		{Kind: reconcile.OrphanDatabase, Shard: "a", Object: stray, Repairable: true},
	}})
	require.NoError(t, err)
	require.Len(t, again, 1)
	require.Equal(t, reconcile.Skipped, again[0].Outcome)

	// A shard that cannot be read is a finding; the others are still read.
	b.exec(t, "a", "postgres", `CREATE DATABASE soon_gone`)
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: "c", DSN: b.shards["a"].DSN("soon_gone"), Region: "eu"})
	require.NoError(t, err)
	b.exec(t, "a", "postgres", `DROP DATABASE soon_gone WITH (FORCE)`)
	rep = b.check(t)
	require.Equal(t, sorted(append(left, item{reconcile.ShardUnreachable, "c", "", "", "", false})), sorted(items(rep)))
	for _, sh := range rep.Shards {
		if sh.Name == "c" {
			require.Contains(t, sh.Error, "soon_gone")
		}
	}
}

// What an operation in progress names is in flight: a check reports none
// of it and a repair drops none of it, not even when handed a finding
// that names it. Once the operation is over, what it left is reported, and
// only what no tenant names is repaired.
func TestCheckLeavesOperationsInFlight(t *testing.T) {
	t.Parallel()
	b := setup(t)
	mover := b.create(t, "mover", "a")
	b.create(t, "bystander", "b")

	// A move from a to b whose server died after it made the target
	// database, the slot, the publication and (16+) the subscription role:
	// recorded as the provisioner records one, its recovery not yet due.
	moveOp := insertOperation(t, b, shardmap.NewOperation{ID: "6f1c0a52-0000-4000-8000-000000000001", Kind: silo.OpMove, TenantID: "mover",
		Params: map[string]any{"from": "a", "to": "b", "targetMade": true}}, nil)
	b.exec(t, "b", "postgres", `CREATE ROLE `+mover.Database+` LOGIN`, `CREATE DATABASE `+mover.Database+` OWNER `+mover.Database,
		`CREATE ROLE silo_sub_`+mover.Database+` LOGIN`, `GRANT CREATE ON DATABASE `+mover.Database+` TO silo_sub_`+mover.Database)
	b.exec(t, "a", mover.Database, `CREATE PUBLICATION silo_move FOR ALL TABLES`,
		`SELECT pg_create_logical_replication_slot('silo_move_`+mover.Database+`', 'pgoutput')`)
	// A create that claimed a warm unit (its row gone from the pool, its
	// name in the operation) and died before it renamed it.
	newbie := silo.Tenant{ID: "newbie", Shard: "a", Database: "t_newbieaaaaaaaaaaaaaaaa", Region: "eu", State: silo.TenantProvisioning}
	createOp := insertOperation(t, b, shardmap.NewOperation{ID: "6f1c0a52-0000-4000-8000-000000000002", Kind: silo.OpCreate, TenantID: "newbie",
		Params: map[string]any{"warmDatabase": "silo_warm_claimed"}}, &newbie)
	b.exec(t, "a", "postgres", `CREATE ROLE silo_warm_claimed NOLOGIN`, `CREATE DATABASE silo_warm_claimed OWNER silo_warm_claimed`)

	rep := b.check(t)
	require.Empty(t, items(rep), "in flight, not wrong: %v", rep.Findings)
	require.Equal(t, 2, rep.InFlight)
	repairs, err := b.checker.Repair(b.ctx, nil)
	require.NoError(t, err)
	require.Empty(t, repairs)

	// Handed findings that name them (a stale report, say), the repair
	// asks the catalog once more and drops nothing.
	for _, f := range []reconcile.Finding{
		{Kind: reconcile.OrphanDatabase, Shard: "b", Object: mover.Database, Repairable: true},
		{Kind: reconcile.OrphanDatabase, Shard: "a", Object: "t_newbieaaaaaaaaaaaaaaaa", Repairable: true},
		{Kind: reconcile.OrphanWarmUnit, Shard: "a", Object: "silo_warm_claimed", Repairable: true},
		{Kind: reconcile.OrphanRole, Shard: "b", Object: "silo_sub_" + mover.Database, Repairable: true},
		{Kind: reconcile.OrphanSlot, Shard: "a", Object: "silo_move_" + mover.Database, Database: mover.Database, Repairable: true},
		{Kind: reconcile.OrphanPublication, Shard: "a", Object: "silo_move", Database: mover.Database, Repairable: true},
	} {
		r := b.checker.RepairFinding(b.ctx, f)
		require.Equal(t, reconcile.Skipped, r.Outcome, "%s %s", f.Kind, f.Object)
		require.Contains(t, r.Error, "in progress")
	}
	audit, err := b.store.ListAudit(b.ctx, shardmap.AuditFilter{Action: "check.repair"}, silo.Page{})
	require.NoError(t, err)
	require.Len(t, audit.Items, 6, "refused repairs are audited too")
	require.Equal(t, silo.ECONFLICT, audit.Items[0].Result)
	for _, s := range []struct{ shard, what, name string }{
		{"b", "database", mover.Database}, {"b", "role", "silo_sub_" + mover.Database}, {"a", "slot", "silo_move_" + mover.Database},
		{"a", "database", "silo_warm_claimed"}, {"a", "database", mover.Database},
	} {
		require.True(t, b.has(t, s.shard, s.what, s.name), "%s %s on %s", s.what, s.name, s.shard)
	}

	// The move failed and its undo was lost; the create failed too.
	for _, id := range []string{moveOp, createOp} {
		_, err := b.store.FinishOperation(b.ctx, nil, id, "", []silo.OperationStep{}, silo.Errorf(silo.EUNAVAILABLE, "the server died"))
		require.NoError(t, err)
	}
	rep = b.check(t)
	want := []item{
		{reconcile.OrphanSlot, "a", "silo_move_" + mover.Database, mover.Database, "", true},
		{reconcile.OrphanPublication, "a", "silo_move", mover.Database, "mover", true},
		{reconcile.OrphanWarmUnit, "a", "silo_warm_claimed", "", "", true},
		{reconcile.OrphanDatabase, "b", mover.Database, "", "", false}, // mover's name: an operator decides
		{reconcile.OrphanRole, "b", "silo_sub_" + mover.Database, "", "", true},
		{reconcile.MissingDatabase, "a", "t_newbieaaaaaaaaaaaaaaaa", "", "newbie", false},
		{reconcile.MissingRole, "a", "t_newbieaaaaaaaaaaaaaaaa", "", "newbie", false},
	}
	require.Equal(t, sorted(want), sorted(items(rep)))
	repairs, err = b.checker.Repair(b.ctx, rep)
	require.NoError(t, err)
	require.Len(t, repairs, 4)
	for _, r := range repairs {
		require.Equal(t, reconcile.Repaired, r.Outcome, "%s %s: %s", r.Kind, r.Object, r.Error)
	}
	require.True(t, b.has(t, "b", "database", mover.Database), "a database a tenant names is never dropped")
	require.True(t, b.has(t, "a", "database", mover.Database))
	require.False(t, b.has(t, "a", "slot", "silo_move_"+mover.Database))
	require.False(t, b.has(t, "a", "database", "silo_warm_claimed"))
}

// insertOperation records a running operation (and, with t, its tenant)
// as the provisioner does, without a recovery job: a server that died
// before its recovery was due.
func insertOperation(t *testing.T, b *bundle, op shardmap.NewOperation, tn *silo.Tenant) string {
	t.Helper()
	err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
		if tn != nil {
			if _, err := b.store.InsertTenant(b.ctx, tx, *tn, nil); err != nil {
				return err
			}
		}
		_, err := b.store.InsertOperation(b.ctx, tx, op)
		return err
	})
	require.NoError(t, err)
	return op.ID
}
