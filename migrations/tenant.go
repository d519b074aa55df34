package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed tenant/*.sql
var tenantFiles embed.FS

// TenantVersionTable is the goose version table in every tenant database.
const TenantVersionTable = "silo_schema_migrations"

// TenantFS returns the tenant migrations: the embedded example schema when
// dir is "", and the goose SQL files of dir otherwise. It returns an error
// when dir cannot be read or holds no migration.
func TenantFS(dir string) (fs.FS, error) {
	var fsys fs.FS
	if dir == "" {
		sub, err := fs.Sub(tenantFiles, "tenant")
		if err != nil {
			return nil, err
		}
		fsys = sub
	} else {
		fi, err := os.Stat(dir)
		if err != nil {
			return nil, fmt.Errorf("tenant migrations: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("tenant migrations: %s is not a directory", dir)
		}
		fsys = os.DirFS(dir)
	}
	if _, err := LatestVersion(fsys); err != nil {
		return nil, err
	}
	return fsys, nil
}

// LatestVersion returns the highest version among the goose SQL files of
// fsys, read from their names (00042_add_index.sql is version 42).
func LatestVersion(fsys fs.FS) (int64, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return 0, err
	}
	var latest int64
	for _, name := range names {
		v, err := goose.NumericComponent(name)
		if err != nil {
			return 0, fmt.Errorf("tenant migration %s: %w", name, err)
		}
		latest = max(latest, v)
	}
	if latest == 0 {
		return 0, errors.New("tenant migrations: no goose SQL file (NNNNN_name.sql) found")
	}
	return latest, nil
}

// MigrateTenant applies fsys's pending migrations to the database behind
// pool, under a session lock on that database, and returns its version.
// ctx bounds the run.
func MigrateTenant(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS) (int64, error) {
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 120))
	if err != nil {
		return 0, err
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithTableName(TenantVersionTable),
	)
	if err != nil {
		return 0, fmt.Errorf("tenant migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return 0, fmt.Errorf("apply tenant migrations: %w", err)
	}
	return p.GetDBVersion(ctx)
}
