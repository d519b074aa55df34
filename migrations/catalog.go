package migrations

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

//go:embed catalog/*.sql
var catalogFiles embed.FS

// catalogLockID is the advisory lock taken while migrating the catalog;
// distinct from goose's default so an application's own goose runs on the
// same server never wait for Silo's.
const catalogLockID int64 = 0x5110_CA7A_0001

// CatalogFS returns the catalog's migration files.
func CatalogFS() fs.FS {
	sub, err := fs.Sub(catalogFiles, "catalog")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	return sub
}

// ApplyCatalog applies every pending catalog migration to the database behind
// pool and returns the resulting version. It holds a PostgreSQL advisory
// session lock while it works, so concurrent callers on one catalog wait for
// each other and each migration runs once. ctx bounds the whole run,
// including the wait for the lock.
func ApplyCatalog(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) (int64, error) {
	// Poll every second (goose's default is 5s) for up to two minutes: a
	// server waiting for another's migrations starts as soon as they end.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(catalogLockID), lock.WithLockTimeout(1, 120))
	if err != nil {
		return 0, fmt.Errorf("catalog migration lock: %w", err)
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, CatalogFS(),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithTableName("silo_catalog_migrations"),
	)
	if err != nil {
		return 0, fmt.Errorf("catalog migrations: %w", err)
	}
	results, err := p.Up(ctx)
	for _, r := range results {
		if r.Error == nil {
			log.Info("catalog migration applied", "version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("apply catalog migrations: %w", err)
	}
	v, err := p.GetDBVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("catalog version: %w", err)
	}
	if err := applyRiver(ctx, pool, log); err != nil {
		return 0, err
	}
	return v, nil
}

// applyRiver brings River's job tables in the catalog up to date, under the
// same advisory lock as the catalog's migrations, held on one connection.
func applyRiver(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("river migrations: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", catalogLockID); err != nil {
		return fmt.Errorf("river migrations lock: %w", err)
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", catalogLockID)
	}()
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: log})
	if err != nil {
		return fmt.Errorf("river migrations: %w", err)
	}
	res, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil)
	if err != nil {
		return fmt.Errorf("apply river migrations: %w", err)
	}
	for _, v := range res.Versions {
		log.Info("river migration applied", "version", v.Version, "duration", v.Duration)
	}
	return nil
}
