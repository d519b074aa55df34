// Package catalogtest gives tests a fresh, migrated catalog database on the
// test binary's catalog cluster (internal/pgtest).
package catalogtest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/shardmap"
)

// New returns a pool (20 connections) and a Store over a new catalog
// database with every migration applied, logging to log. The pool closes
// when the test ends, after any cleanup registered later (LIFO), so
// services built on it can stop first. It fails the test on any error.
func New(t testing.TB, log *slog.Logger) (*pgxpool.Pool, *shardmap.Store) {
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
	store, err := shardmap.New(shardmap.Config{Pool: pool, Logger: log, ProbeTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return pool, store
}
