// Package catalogtest gives tests a fresh, migrated catalog database on the
// test binary's catalog cluster (internal/pgtest).
package catalogtest

import (
	"context"
	"crypto/rand"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/migrations"
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
