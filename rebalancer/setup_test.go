package rebalancer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/shardmap"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var testKey = []byte("0123456789abcdef0123456789abcdef")

// idSeq makes tenant ids unique across the tests of this binary, which
// share the shard clusters.
var idSeq atomic.Int64

func newID(prefix string) string { return fmt.Sprintf("%s-%d", prefix, idSeq.Add(1)) }

type bundle struct {
	ctx      context.Context
	store    *shardmap.Store
	fleet    *pgtest.Fleet
	pool     *pgxpool.Pool
	eng      *engine.Engine
	prov     *provisioner.Provisioner
	dialer   *shardmap.Dialer
	registry *prometheus.Registry
}

// setup returns a Rebalancer that moves tenants, over a fresh catalog with
// both test shards registered (as a and b), and the started engine and
// provisioner it uses (cfg configures the provisioner). The engine's
// recovery sweep waits an hour, so that tests may take a move through its
// steps by hand, as the server that died did.
func setup(t *testing.T, cfg provisioner.Config) (*Rebalancer, *bundle) {
	t.Helper()
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(failureLog(t), nil))
	pool, store := catalogtest.New(t, log)
	for i, name := range []string{"a", "b"} {
		_, err := store.CreateShard(ctx, silo.Shard{Name: name, DSN: fleet.Shards[i].DSN("postgres"), Region: "eu"})
		require.NoError(t, err)
	}
	sealer, err := shardmap.NewSealer(testKey)
	require.NoError(t, err)
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	dialer, err := shardmap.NewDialer(shardmap.DialerConfig{Store: store, Sealer: sealer, ConnectTimeout: cfg.ConnectTimeout, Logger: log})
	require.NoError(t, err)
	registry := prometheus.NewRegistry()
	eng := catalogtest.NewEngine(t, pool, store, log, engine.Config{RecoveryDelay: time.Hour, Registry: registry})
	cfg.Catalog, cfg.Store, cfg.Engine, cfg.Dialer, cfg.SecretKey, cfg.Logger = pool, store, eng, dialer, testKey, log
	cfg.WarmPoolSize, cfg.MaintenanceInterval = -1, time.Hour
	prov, err := provisioner.New(cfg)
	require.NoError(t, err)
	r, err := New(Config{Catalog: pool, Store: store, Dialer: dialer, Engine: eng, Provisioner: prov, Logger: log, Registry: registry})
	require.NoError(t, err)
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, eng.Stop(sctx)) // first: its operations use the provisioner's pools
		require.NoError(t, prov.Stop(sctx))
	})
	require.NoError(t, eng.Start(ctx))
	ctx = silo.WithActor(ctx, silo.Actor{Name: "tester"})
	return r, &bundle{ctx: ctx, store: store, fleet: fleet, pool: pool, eng: eng, prov: prov, dialer: dialer, registry: registry}
}

// failureLog returns a writer whose lines the test prints if it fails:
// the servers' logs say which phase of a cutover took its time.
func failureLog(t *testing.T) io.Writer {
	w := &lockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", w.String())
		}
	})
	return w
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// create makes an active tenant on shard.
func (b *bundle) create(t *testing.T, prefix, shard string) *silo.Tenant {
	t.Helper()
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID(prefix), Shard: shard}, 30*time.Second)
	require.NoError(t, err)
	return res.Tenant
}

// tenant reads a tenant from the catalog.
func (b *bundle) tenant(t *testing.T, id string) *silo.Tenant {
	t.Helper()
	tn, err := b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	return tn
}

// asTenant connects to a tenant's database on its shard as its own role.
func (b *bundle) asTenant(t *testing.T, tn *silo.Tenant) *pgx.Conn {
	t.Helper()
	conn, err := b.dialer.ConnectTenant(b.ctx, tn, "")
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// asAdmin connects to database db of a shard as its admin ("" for the
// shard's maintenance database).
func (b *bundle) asAdmin(t *testing.T, shard, db string) *pgx.Conn {
	t.Helper()
	conn, err := b.dialer.ConnectAdmin(b.ctx, shard, db)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// shardHas reports whether a database and a role of that name exist on
// shard.
func (b *bundle) shardHas(t *testing.T, shard, name string) (db, role bool) {
	t.Helper()
	conn, err := b.dialer.ConnectAdmin(b.ctx, shard, "")
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1),
		EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, name).Scan(&db, &role))
	return db, role
}

// major is the PostgreSQL major version of a shard.
func (b *bundle) major(t *testing.T, shard string) int {
	t.Helper()
	sc, err := b.prov.ShardAdmin(b.ctx, shard)
	require.NoError(t, err)
	return sc.Major()
}

func requireCode(t *testing.T, err error, code string) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, silo.ErrorCode(err), "error: %v", err)
}

// requirePgDump returns the pg_dump beside the PostgreSQL server binaries,
// or skips the test: the PostgreSQL 16+ packages of the npm registry ship
// none, and Debian's pg_dump 15 refuses a newer server.
func requirePgDump(t *testing.T) string {
	t.Helper()
	binDir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	path := filepath.Join(binDir, "pg_dump")
	if _, err := os.Stat(path); err != nil {
		t.Skipf("no pg_dump beside the PostgreSQL server binaries in %s (the 16+ packages of the npm registry ship none)", binDir)
	}
	return path
}

// ownShard starts a cluster of the test's own (which it may stop) and
// registers it as shard name in region eu; it returns the cluster and its
// config, to start it again.
func (b *bundle) ownShard(t *testing.T, name string, settings map[string]string) (*pgcluster.Cluster, pgcluster.Config) {
	t.Helper()
	dir, err := os.MkdirTemp("", "move-"+name+"-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg := pgcluster.Config{Dir: filepath.Join(dir, name), Fast: true, Settings: settings}
	c, err := pgcluster.Start(b.ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: name, DSN: c.DSN("postgres"), Region: "eu"})
	require.NoError(t, err)
	return c, cfg
}

// startMove records a move of tn from shard from to "b" without running
// it, and runs its steps up to and including last (see stepsUpTo).
func startMove(t *testing.T, r *Rebalancer, b *bundle, tn *silo.Tenant, from, last string, schema func()) string {
	t.Helper()
	opID := uuid.NewString()
	params := map[string]any{"operation": opID, "from": from, "to": "b"}
	require.NoError(t, b.store.Mutate(b.ctx, "tenant.move", "tenant/"+tn.ID, params, func(tx pgx.Tx) error {
		return b.eng.Insert(b.ctx, tx, shardmap.NewOperation{ID: opID, Kind: silo.OpMove, TenantID: tn.ID, Params: params})
	}))
	stepsUpTo(t, r, b, opID, last, schema)
	return opID
}

// plan returns the plan of move operation opID as it stands.
func plan(t *testing.T, r *Rebalancer, b *bundle, opID string) engine.Plan {
	t.Helper()
	op, err := b.store.GetOperation(b.ctx, opID)
	require.NoError(t, err)
	params, err := b.store.OperationParams(b.ctx, opID)
	require.NoError(t, err)
	pl, err := r.movePlan(op, params)
	require.NoError(t, err)
	return pl
}

// stepsUpTo runs a move's forward steps up to and including last, as the
// server that took the request would. With schema set, it skips
// copy-schema and calls schema instead: the test makes the target's
// schema itself, as it would be without a pg_dump that can read the
// source (the PostgreSQL 16+ packages have none).
func stepsUpTo(t *testing.T, r *Rebalancer, b *bundle, opID, last string, schema func()) {
	t.Helper()
	ctx := engine.WithOperation(b.ctx, opID)
	for _, s := range plan(t, r, b, opID).Steps {
		if s.Name == "copy-schema" && schema != nil {
			schema()
		} else {
			require.NoError(t, s.Run(ctx), s.Name)
		}
		if s.Name == last {
			return
		}
	}
}

// migrateTarget makes tenant tn's schema on shard as the embedded tenant
// migrations would (what copy-schema copies from a tenant that added
// nothing), as the tenant, without the version table's rows: those come
// with the data.
func (b *bundle) migrateTarget(t *testing.T, tn *silo.Tenant, shard string) {
	t.Helper()
	files, err := migrations.TenantFS("")
	require.NoError(t, err)
	pool, err := b.dialer.TenantPool(b.ctx, tn, shard, 1)
	require.NoError(t, err)
	defer pool.Close()
	_, _, err = migrations.MigrateTenantTo(b.ctx, pool, files, tn.SchemaVersion)
	require.NoError(t, err)
	_, err = pool.Exec(b.ctx, `TRUNCATE silo_schema_migrations`)
	require.NoError(t, err)
}

// shardDSN is the superuser DSN of database db on test shard a or b.
func (b *bundle) shardDSN(shard, db string) string {
	return b.fleet.Shards[map[string]int{"a": 0, "b": 1}[shard]].DSN(db)
}
