// Package catalogtest gives tests a fresh, migrated catalog database on the
// test binary's catalog cluster (internal/pgtest).
package catalogtest

import (
	"context"
	"crypto/rand"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/shardmap"
)

// SecretKey seals the shard DSNs of the Stores that New returns: a random
// key, one per test binary.
var SecretKey = func() []byte {
	key := make([]byte, shardmap.SecretKeyLen)
	_, _ = rand.Read(key)
	return key
}()

// New returns a pool (20 connections) and a Store over a new catalog
// database with every migration applied, logging to log, whose shard DSNs
// are sealed under SecretKey. The pool closes when the test ends, after any
// cleanup registered later (LIFO), so services built on it can stop first.
// It fails the test on any error.
func New(t testing.TB, log *slog.Logger) (*pgxpool.Pool, *shardmap.Store) {
	t.Helper()
	pool := NewPool(t, log)
	return pool, NewStore(t, pool, log, SecretKey)
}

// NewPool is New without the Store.
func NewPool(t testing.TB, log *slog.Logger) *pgxpool.Pool {
	t.Helper()
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := shardmap.OpenCatalog(ctx, pgtest.NewDatabase(t, fleet.Catalog), 20, 5*time.Second, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := migrations.ApplyCatalog(ctx, pool, log); err != nil {
		t.Fatal(err)
	}
	return pool
}

// NewStore returns a Store over pool whose Sealer has the key ring: a
// current key, then any previous ones (shardmap.ParseKeyRing). Stores with
// different rings over one pool are servers before and after a key
// rotation.
func NewStore(t testing.TB, pool *pgxpool.Pool, log *slog.Logger, ring []byte) *shardmap.Store {
	t.Helper()
	sealer, err := shardmap.NewSealer(ring)
	if err != nil {
		t.Fatal(err)
	}
	store, err := shardmap.New(shardmap.Config{Pool: pool, Logger: log, ProbeTimeout: 10 * time.Second, Sealer: sealer}) // a busy CI machine
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// NewAtVersion returns the DSN of a new catalog database, and a pool (4
// connections) over it, migrated up to version only: a catalog that an
// earlier Silo left, for a test to upgrade with migrations.ApplyCatalog.
func NewAtVersion(t testing.TB, version int64) (string, *pgxpool.Pool) {
	t.Helper()
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn := pgtest.NewDatabase(t, fleet.Catalog)
	pool, err := shardmap.OpenCatalog(ctx, dsn, 4, 5*time.Second, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	// The table ApplyCatalog keeps its versions in, so that it takes over
	// from here.
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.CatalogFS(),
		goose.WithDisableGlobalRegistry(true), goose.WithTableName("silo_catalog_migrations"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, version); err != nil {
		t.Fatal(err)
	}
	return dsn, pool
}

// NewEngine returns an operation engine over the catalog in pool, not yet
// started (register kinds and job sources, then Start it), that stops
// before the pool closes. cfg's Catalog, Store and Logger are filled in.
func NewEngine(t testing.TB, pool *pgxpool.Pool, store *shardmap.Store, log *slog.Logger, cfg engine.Config) *engine.Engine {
	t.Helper()
	cfg.Catalog, cfg.Store, cfg.Logger = pool, store, log
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := eng.Stop(ctx); err != nil {
			t.Errorf("engine stop: %v", err)
		}
	})
	return eng
}

// Own is a catalog on a PostgreSQL cluster of the test's own, for tests
// that freeze or stop it: the test binary's catalog cluster is shared.
// Pool and Store are as New's, and outlive the cluster's restarts (it keeps
// its port). Its methods are safe for concurrent use.
type Own struct {
	Pool  *pgxpool.Pool
	Store *shardmap.Store

	cfg     pgcluster.Config
	mu      sync.Mutex
	cluster *pgcluster.Cluster
}

// NewOwn starts a cluster in a temporary directory and returns a migrated
// catalog on it, whose shard DSNs are sealed under SecretKey. t.Cleanup
// closes the pool and then resumes and stops the cluster. It fails the test
// on any error.
func NewOwn(t testing.TB, log *slog.Logger) *Own {
	t.Helper()
	pgtest.Start(t) // finds the server binaries, and stops the clusters at the end
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "catalogtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	// As root, the cluster runs as the postgres user, which must reach it.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	o := &Own{cfg: pgcluster.Config{Dir: filepath.Join(dir, "catalog"), Fast: true}}
	if o.cluster, err = pgcluster.Start(ctx, o.cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		_ = o.cluster.Resume()
		_ = o.cluster.Stop(context.Background())
	})
	if o.Pool, err = shardmap.OpenCatalog(ctx, o.cluster.DSN("postgres"), 20, 2*time.Second, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.Pool.Close)
	if _, err := migrations.ApplyCatalog(ctx, o.Pool, log); err != nil {
		t.Fatal(err)
	}
	o.Store = NewStore(t, o.Pool, log, SecretKey)
	return o
}

// Pause freezes the catalog's server (SIGSTOP): it accepts connections
// and never answers.
func (o *Own) Pause() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.cluster.Pause()
}

// Resume continues a paused server.
func (o *Own) Resume() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.cluster.Resume()
}

// Stop stops the catalog's server.
func (o *Own) Stop(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.cluster.Stop(ctx)
}

// Start starts the stopped server again, on the same port.
func (o *Own) Start(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	c, err := pgcluster.Start(ctx, o.cfg)
	if err != nil {
		return err
	}
	o.cluster = c
	return nil
}
