package provisioner

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/shardmap"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var testKey = []byte("0123456789abcdef0123456789abcdef")

// ids makes tenant ids unique across the tests of this binary, which share
// the shard clusters.
var idSeq atomic.Int64

func newID(prefix string) string { return fmt.Sprintf("%s-%d", prefix, idSeq.Add(1)) }

type bundle struct {
	ctx   context.Context
	store *shardmap.Store
	fleet *pgtest.Fleet
	pool  *pgxpool.Pool
	eng   *engine.Engine
}

// setup returns a started Provisioner over a fresh catalog with both test
// shards registered (as a and b). Its engine's recovery sweep waits an
// hour, so that tests may take operations through steps by hand, as the
// server that died did; setupRecovering's takes over within a second.
func setup(t *testing.T, cfg Config) (*Provisioner, *bundle) {
	t.Helper()
	return setupWith(t, cfg, time.Hour)
}

func setupRecovering(t *testing.T, cfg Config) (*Provisioner, *bundle) {
	t.Helper()
	return setupWith(t, cfg, time.Second)
}

func setupWith(t *testing.T, cfg Config, recoveryDelay time.Duration) (*Provisioner, *bundle) {
	t.Helper()
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	pool, store := catalogtest.New(t, log)
	for i, name := range []string{"a", "b"} {
		_, err := store.CreateShard(ctx, silo.Shard{Name: name, DSN: fleet.Shards[i].DSN("postgres"), Region: "eu"})
		require.NoError(t, err)
	}
	eng := catalogtest.NewEngine(t, pool, store, log, engine.Config{RecoveryDelay: recoveryDelay, Registry: cfg.Registry})
	cfg.Catalog, cfg.Store, cfg.Engine, cfg.SecretKey, cfg.Logger = pool, store, eng, testKey, log
	if cfg.WarmPoolSize == 0 {
		cfg.WarmPoolSize = -1 // tests that want a pool say so
	}
	if cfg.MaintenanceInterval == 0 {
		cfg.MaintenanceInterval = time.Hour // run by hand in tests
	}
	p, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, eng.Stop(sctx)) // first: its operations use the provisioner's pools
		require.NoError(t, p.Stop(sctx))
	})
	require.NoError(t, eng.Start(ctx))
	ctx = silo.WithActor(ctx, silo.Actor{Name: "tester"})
	return p, &bundle{ctx: ctx, store: store, fleet: fleet, pool: pool, eng: eng}
}

func (b *bundle) shardDSN(t *testing.T, shard, db string) string {
	t.Helper()
	i := map[string]int{"a": 0, "b": 1}[shard]
	return b.fleet.Shards[i].DSN(db)
}

// tenantDSN connects as the tenant's own role, with the password from the
// catalog.
func (b *bundle) tenantDSN(t *testing.T, p *Provisioner, tn *silo.Tenant) string {
	t.Helper()
	sealed, err := b.store.TenantSecret(b.ctx, tn.ID)
	require.NoError(t, err)
	pw, err := p.sealer.Open(sealed, tn.ID)
	require.NoError(t, err)
	c := b.fleet.Shards[map[string]int{"a": 0, "b": 1}[tn.Shard]]
	return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", tn.Database, pw, c.Port(), tn.Database)
}

func requireCode(t *testing.T, err error, code string) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, silo.ErrorCode(err), "error: %v", err)
}

// shardHas reports whether a database and a role of that name exist on shard.
// dbName is the name of a tenant's database and role, from the catalog.
func (b *bundle) dbName(t *testing.T, id string) string {
	t.Helper()
	tn, err := b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	return tn.Database
}

func (b *bundle) shardHas(t *testing.T, shard, name string) (db, role bool) {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.shardDSN(t, shard, "postgres"))
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&db))
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, name).Scan(&role))
	return db, role
}

func TestCreateAndIsolation(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	ida, idb := newID("iso-a"), newID("iso-b")
	ra, err := p.Create(b.ctx, CreateRequest{ID: ida, Shard: "a"}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, ra.Operation.State)
	ta := ra.Tenant
	require.Equal(t, silo.TenantActive, ta.State)
	require.Equal(t, "a", ta.Shard)
	require.Equal(t, "eu", ta.Region)
	// A name that says nothing of the tenant: every tenant can list them.
	require.Regexp(t, `^t_[a-z2-7]{20}$`, ta.Database)
	require.NotContains(t, ta.Database, strings.ReplaceAll(ida, "-", "_"))
	require.Equal(t, int64(1), ta.SchemaVersion)
	var names []string
	for _, s := range ra.Operation.Steps {
		require.Equal(t, silo.OpSucceeded, s.State)
		names = append(names, s.Name)
	}
	require.Equal(t, []string{"role", "database", "ownership", "activate"}, names)

	rb, err := p.Create(b.ctx, CreateRequest{ID: idb, Shard: "a"}, time.Minute)
	require.NoError(t, err)

	// The tenant's role owns its database and schema, and is no more than
	// a login.
	conn, err := pgx.Connect(b.ctx, b.tenantDSN(t, p, ta))
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	var user string
	var super, createdb, createrole bool
	require.NoError(t, conn.QueryRow(b.ctx, `
		SELECT current_user, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user`).Scan(&user, &super, &createdb, &createrole))
	require.Equal(t, ta.Database, user)
	require.False(t, super || createdb || createrole)
	_, err = conn.Exec(b.ctx, `INSERT INTO notes (title) VALUES ('hello')`)
	require.NoError(t, err)
	_, err = conn.Exec(b.ctx, `CREATE TABLE mine (x int)`)
	require.NoError(t, err, "the tenant owns its schema")
	var owner string
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT tableowner FROM pg_tables WHERE tablename = 'notes'`).Scan(&owner))
	require.Equal(t, ta.Database, owner)

	// Tenant A's role cannot connect to tenant B's database.
	cfg, err := pgx.ParseConfig(b.tenantDSN(t, p, ta))
	require.NoError(t, err)
	cfg.Database = rb.Tenant.Database
	_, err = pgx.ConnectConfig(b.ctx, cfg)
	require.ErrorContains(t, err, "permission denied for database")
	// Nor to the template, nor to the postgres database's objects of others.
	cfg.Database = templateDB
	_, err = pgx.ConnectConfig(b.ctx, cfg)
	require.ErrorContains(t, err, "permission denied for database")

	// The password is sealed in the catalog, bound to its tenant.
	sealed, err := b.store.TenantSecret(b.ctx, ida)
	require.NoError(t, err)
	_, err = p.sealer.Open(sealed, idb)
	require.Error(t, err, "a sealed password does not open for another tenant")

	audit, err := b.store.ListAudit(b.ctx, shardmap.AuditFilter{Target: "tenant/" + ida}, silo.Page{})
	require.NoError(t, err)
	require.Len(t, audit.Items, 1)
	require.Equal(t, "tenant.create", audit.Items[0].Action)
	require.Equal(t, "tester", audit.Items[0].Actor)
	require.Equal(t, ra.Operation.ID, audit.Items[0].Params["operation"])
}

func TestCreateBadInput(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	_, err := b.store.SetShardState(b.ctx, "b", silo.ShardDraining)
	require.NoError(t, err)
	for _, tc := range []struct {
		req  CreateRequest
		code string
		rule string
	}{
		{CreateRequest{ID: "Acme"}, silo.EINVALID, "lowercase"},
		{CreateRequest{ID: "acme'"}, silo.EINVALID, "lowercase"},
		{CreateRequest{ID: "acme;drop"}, silo.EINVALID, "lowercase"},
		{CreateRequest{ID: "ac me"}, silo.EINVALID, "lowercase"},
		{CreateRequest{ID: "../acme"}, silo.EINVALID, "lowercase"},
		{CreateRequest{ID: strings.Repeat("a", 49)}, silo.EINVALID, "longer than 48"},
		{CreateRequest{ID: "postgres"}, silo.EINVALID, "reserved"},
		{CreateRequest{ID: "ok-1", Shard: "nope"}, silo.EINVALID, "does not exist"},
		{CreateRequest{ID: "ok-1", Shard: "b"}, silo.EINVALID, "draining"},
		{CreateRequest{ID: "ok-1", Region: "mars"}, silo.EINVALID, "no shard serves region"},
		{CreateRequest{ID: "ok-1", Region: "Mars!"}, silo.EINVALID, "region"},
		{CreateRequest{ID: "ok-1", Shard: "a", Region: "us"}, silo.EINVALID, "not \"us\""},
		{CreateRequest{ID: "ok-1", IdempotencyKey: strings.Repeat("k", 129)}, silo.EINVALID, "idempotency key"},
	} {
		_, err := p.Create(b.ctx, tc.req, time.Minute)
		requireCode(t, err, tc.code)
		require.Contains(t, silo.ErrorMessage(err), tc.rule, "%+v", tc.req)
	}
	list, err := b.store.ListTenants(b.ctx, shardmap.TenantFilter{}, silo.Page{})
	require.NoError(t, err)
	require.Empty(t, list.Items)

	_, err = b.store.SetShardState(b.ctx, "a", silo.ShardDisabled)
	require.NoError(t, err)
	_, err = p.Create(b.ctx, CreateRequest{ID: newID("none")}, time.Minute)
	requireCode(t, err, silo.EUNAVAILABLE)
	require.Contains(t, silo.ErrorMessage(err), "no active shard")
}

func TestPlacement(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	sh, err := b.store.GetShard(b.ctx, "b")
	require.NoError(t, err)
	// b has three times a's capacity.
	_, err = b.pool.Exec(b.ctx, `UPDATE shards SET weight = 300 WHERE name = 'b'`)
	require.NoError(t, err)
	_ = sh
	counts := map[string]int{}
	for range 4 {
		r, err := p.Create(b.ctx, CreateRequest{ID: newID("place")}, time.Minute)
		require.NoError(t, err)
		counts[r.Tenant.Shard]++
	}
	require.Equal(t, map[string]int{"a": 1, "b": 3}, counts)

	// A region pins placement to its shards.
	_, err = b.pool.Exec(b.ctx, `UPDATE shards SET region = 'us' WHERE name = 'a'`)
	require.NoError(t, err)
	r, err := p.Create(b.ctx, CreateRequest{ID: newID("place-us"), Region: "us"}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, "a", r.Tenant.Shard)
	require.Equal(t, "us", r.Tenant.Region)
}

func TestConcurrentCreates(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	const n = 50
	errs := make([]error, n)
	var wg sync.WaitGroup
	prefix := newID("many")
	for i := range n {
		wg.Go(func() {
			_, errs[i] = p.Create(b.ctx, CreateRequest{ID: fmt.Sprintf("%s-%d", prefix, i)}, time.Minute)
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	list, err := b.store.ListTenants(b.ctx, shardmap.TenantFilter{State: silo.TenantActive}, silo.Page{Limit: 100})
	require.NoError(t, err)
	require.Len(t, list.Items, n)
	// Placements see each other: equal shards get equal shares.
	perShard := map[string]int{}
	for _, tn := range list.Items {
		perShard[tn.Shard]++
	}
	require.Equal(t, map[string]int{"a": n / 2, "b": n / 2}, perShard)

	// Ten creates of one id: one database, one success, nine conflicts.
	id := newID("same")
	var ok, conflict atomic.Int64
	for range 10 {
		wg.Go(func() {
			_, err := p.Create(b.ctx, CreateRequest{ID: id}, time.Minute)
			switch silo.ErrorCode(err) {
			case "":
				ok.Add(1)
			case silo.ECONFLICT:
				conflict.Add(1)
			default:
				t.Errorf("unexpected error: %v", err)
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(1), ok.Load())
	require.Equal(t, int64(9), conflict.Load())
	tn, err := b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	db, role := b.shardHas(t, tn.Shard, tn.Database)
	require.True(t, db && role)
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	id := newID("idem")
	key := "key-" + id
	first, err := p.Create(b.ctx, CreateRequest{ID: id, IdempotencyKey: key}, time.Minute)
	require.NoError(t, err)
	again, err := p.Create(b.ctx, CreateRequest{ID: id, IdempotencyKey: key}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, first.Operation.ID, again.Operation.ID, "a retry returns the first result")
	require.Equal(t, first.Tenant.ID, again.Tenant.ID)

	_, err = p.Create(b.ctx, CreateRequest{ID: newID("other"), IdempotencyKey: key}, time.Minute)
	requireCode(t, err, silo.ECONFLICT)
	require.Contains(t, silo.ErrorMessage(err), "different request")

	// Concurrent first uses of one key start one operation.
	id2, key2 := newID("idem-race"), "race-"+id
	ops := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ops {
		wg.Go(func() {
			r, err := p.Create(b.ctx, CreateRequest{ID: id2, IdempotencyKey: key2}, time.Minute)
			if err == nil {
				ops[i] = r.Operation.ID
			} else {
				t.Errorf("create with a shared key: %v", err)
			}
		})
	}
	wg.Wait()
	for _, op := range ops {
		require.Equal(t, ops[0], op)
	}
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	dump := pgDump(t)
	p, b := setup(t, Config{GracePeriod: time.Hour, PgDump: dump})
	r, err := p.Create(b.ctx, CreateRequest{ID: newID("life"), Shard: "b"}, time.Minute)
	require.NoError(t, err)
	tn := r.Tenant
	dsn := b.tenantDSN(t, p, tn)

	// A session open at suspension is ended, and no new one starts.
	conn, err := pgx.Connect(b.ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	r, err = p.Suspend(b.ctx, tn.ID, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.TenantSuspended, r.Tenant.State)
	require.Greater(t, r.Tenant.Epoch, tn.Epoch)
	_, err = conn.Exec(b.ctx, "SELECT 1")
	require.Error(t, err, "the open session was terminated")
	_, err = pgx.Connect(b.ctx, dsn)
	require.ErrorContains(t, err, "not permitted to log in")
	_, err = p.Suspend(b.ctx, tn.ID, time.Minute)
	require.NoError(t, err, "suspending twice is fine")

	r, err = p.Resume(b.ctx, tn.ID, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.TenantActive, r.Tenant.State)
	c2, err := pgx.Connect(b.ctx, dsn)
	require.NoError(t, err)
	c2.Close(b.ctx)

	// An export is audited with its size: a copy of the data left.
	if dump != "" {
		var dump bytes.Buffer
		require.NoError(t, p.Export(b.ctx, tn.ID, &dump))
		require.True(t, bytes.HasPrefix(dump.Bytes(), []byte("PGDMP")))
		exports, err := b.store.ListAudit(b.ctx, shardmap.AuditFilter{Action: "tenant.export", Target: "tenant/" + tn.ID}, silo.Page{})
		require.NoError(t, err)
		require.Len(t, exports.Items, 1)
		require.Equal(t, silo.AuditResultOK, exports.Items[0].Result)
		require.EqualValues(t, dump.Len(), exports.Items[0].Params["bytes"])
	}

	r, err = p.Delete(b.ctx, tn.ID, false, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.TenantDeleted, r.Tenant.State)
	require.NotNil(t, r.Tenant.PurgeAfter)
	require.WithinDuration(t, time.Now().Add(time.Hour), *r.Tenant.PurgeAfter, time.Minute)
	_, err = pgx.Connect(b.ctx, dsn)
	require.ErrorContains(t, err, "not permitted to log in")
	db, role := b.shardHas(t, "b", tn.Database)
	require.True(t, db && role, "a soft delete keeps the data")
	for _, f := range []func() (Result, error){
		func() (Result, error) { return p.Suspend(b.ctx, tn.ID, time.Minute) },
		func() (Result, error) { return p.Resume(b.ctx, tn.ID, time.Minute) },
		func() (Result, error) { return p.Delete(b.ctx, tn.ID, false, time.Minute) },
	} {
		_, err := f()
		requireCode(t, err, silo.ECONFLICT)
	}

	r, err = p.Delete(b.ctx, tn.ID, true, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.TenantPurged, r.Tenant.State)
	db, role = b.shardHas(t, "b", tn.Database)
	require.False(t, db || role, "a purge drops the database and the role")
	_, err = b.store.TenantSecret(b.ctx, tn.ID)
	requireCode(t, err, silo.ENOTFOUND)
	_, err = p.Resume(b.ctx, tn.ID, time.Minute)
	requireCode(t, err, silo.ENOTFOUND)
	_, err = p.Create(b.ctx, CreateRequest{ID: tn.ID}, time.Minute)
	requireCode(t, err, silo.ECONFLICT) // tombstones keep their ids

	audit, err := b.store.ListAudit(b.ctx, shardmap.AuditFilter{Target: "tenant/" + tn.ID}, silo.Page{})
	require.NoError(t, err)
	var actions []string
	for _, e := range audit.Items {
		actions = append(actions, e.Action+":"+e.Result)
	}
	require.Equal(t, "tenant.create:ECONFLICT", actions[0], "the refused re-create is recorded")
	require.Contains(t, actions, "tenant.purge:ok")
	require.Contains(t, actions, "tenant.suspend:ok")
	require.Contains(t, actions, "tenant.delete:ok")
}

func TestPurgeAfterGracePeriod(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{GracePeriod: time.Millisecond})
	r, err := p.Create(b.ctx, CreateRequest{ID: newID("grace")}, time.Minute)
	require.NoError(t, err)
	_, err = p.Delete(b.ctx, r.Tenant.ID, false, time.Minute)
	require.NoError(t, err)
	time.Sleep(10 * time.Millisecond)
	// River's periodic sweep may be purging it already; either way it ends
	// purged.
	require.NoError(t, p.PurgeExpired(b.ctx))
	require.Eventually(t, func() bool {
		tn, err := b.store.GetTenant(b.ctx, r.Tenant.ID)
		return err == nil && tn.State == silo.TenantPurged
	}, 30*time.Second, 50*time.Millisecond)
	tn, err := b.store.GetTenant(b.ctx, r.Tenant.ID)
	require.NoError(t, err)
	db, role := b.shardHas(t, tn.Shard, tn.Database)
	require.False(t, db || role)
}

func TestWarmPool(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{WarmPoolSize: 2})
	// River's upkeep runs at start too; whichever run holds a shard's lock
	// fills it, so wait for the result rather than for this call.
	require.NoError(t, p.maintain(b.ctx, ""))
	for _, shard := range []string{"a", "b"} {
		require.Eventually(t, func() bool {
			warm, err := b.store.WarmDatabases(b.ctx, shard)
			return err == nil && len(warm) == 2 && warm[0].Ready && warm[1].Ready
		}, 30*time.Second, 50*time.Millisecond)
		warm, err := b.store.WarmDatabases(b.ctx, shard)
		require.NoError(t, err)
		for _, w := range warm {
			db, role := b.shardHas(t, shard, w.Name)
			require.True(t, db && role, "a warm unit is a database and its role")
		}
	}
	r, err := p.Create(b.ctx, CreateRequest{ID: newID("warm"), Shard: "a"}, time.Minute)
	require.NoError(t, err)
	params, err := b.store.OperationParams(b.ctx, r.Operation.ID)
	require.NoError(t, err)
	claimed, _ := params["warmDatabase"].(string)
	require.True(t, strings.HasPrefix(claimed, warmPrefix), "the create took a warm database: %v", params)
	db, _ := b.shardHas(t, "a", claimed)
	require.False(t, db, "renamed to the tenant's")
	conn, err := pgx.Connect(b.ctx, b.tenantDSN(t, p, r.Tenant))
	require.NoError(t, err)
	_, err = conn.Exec(b.ctx, `INSERT INTO notes (title) VALUES ('from the pool')`)
	require.NoError(t, err)
	conn.Close(b.ctx)

	require.Eventually(t, func() bool {
		warm, err := b.store.WarmDatabases(b.ctx, "a")
		return err == nil && len(warm) == 2 && warm[0].Ready && warm[1].Ready
	}, 30*time.Second, 100*time.Millisecond, "the pool is refilled")
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	p, b := setup(t, Config{Registry: reg})
	_, err := p.Create(b.ctx, CreateRequest{ID: newID("metrics")}, time.Minute)
	require.NoError(t, err)
	_, err = p.Create(b.ctx, CreateRequest{ID: "Bad"}, time.Minute)
	require.Error(t, err)

	require.Equal(t, 1, testutil.CollectAndCount(p.metrics.provision, "silo_provision_duration_seconds"))
	families, err := reg.Gather()
	require.NoError(t, err)
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				require.NotEqual(t, "tenant", l.GetName(), "no tenant ids as label values")
			}
		}
	}
	require.Contains(t, names, "silo_provision_duration_seconds")
	require.Contains(t, names, "silo_operations_total")
	require.Contains(t, names, "silo_operation_steps_total")
}

// pgDump is the pg_dump beside the test's server binaries, or "" when
// there is none (the PostgreSQL 16+ packages of the npm registry).
func pgDump(t *testing.T) string {
	t.Helper()
	dir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	path := filepath.Join(dir, "pg_dump")
	if _, err := os.Stat(path); err != nil {
		t.Logf("no pg_dump in %s: the export is not tried", dir)
		return ""
	}
	return path
}
