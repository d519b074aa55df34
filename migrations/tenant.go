package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
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
// pool, under a session lock on that database, and returns its version. It
// never rolls back: a database already past fsys's latest version is left as
// it is. ctx bounds the run. Errors keep goose's *goose.PartialError and the
// failing statement's *pgconn.PgError reachable with errors.As.
func MigrateTenant(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS) (int64, error) {
	latest, err := LatestVersion(fsys)
	if err != nil {
		return 0, err
	}
	_, to, err := migrateTenant(ctx, pool, fsys, latest, false)
	return to, err
}

// MigrateTenantTo moves the database behind pool to version target of fsys's
// migrations: up when target is above its version, down when it is below,
// not at all when equal. It returns the version before and after. target is
// 0 (every migration undone) or the version of one of fsys's files; any other
// target is an error, and the database is not touched.
//
// Each migration runs in its own transaction under a session lock on the
// database, so concurrent callers wait for each other; from is read before
// the change takes the lock, so another caller may have moved the database
// in between. A failed migration leaves the database at the last migration
// that succeeded, which is returned as to (-1 when it cannot be read); the
// error wraps goose's *goose.PartialError and the failing statement's
// *pgconn.PgError, both reachable with errors.As. Going down does not check
// that the migrations have down sections: call CheckDown first. ctx bounds
// the run, including the wait for the lock.
func MigrateTenantTo(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS, target int64) (from, to int64, err error) {
	return migrateTenant(ctx, pool, fsys, target, true)
}

// migrateTenant is MigrateTenantTo, which only goes down when allowDown is
// set.
func migrateTenant(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS, target int64, allowDown bool) (from, to int64, err error) {
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 120))
	if err != nil {
		return 0, 0, err
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithTableName(TenantVersionTable),
	)
	if err != nil {
		return 0, 0, fmt.Errorf("tenant migrations: %w", err)
	}
	if err := checkTarget(p.ListSources(), target); err != nil {
		return 0, 0, err
	}
	from, err = p.GetDBVersion(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("tenant migration version: %w", err)
	}
	switch {
	case target > from:
		_, err = p.UpTo(ctx, target)
	case target < from && allowDown:
		_, err = p.DownTo(ctx, target)
	}
	if err != nil {
		return from, leftAt(ctx, pool), fmt.Errorf("migrate tenant from version %d to %d: %w", from, target, err)
	}
	to, err = p.GetDBVersion(ctx)
	if err != nil {
		return from, -1, fmt.Errorf("tenant migration version: %w", err)
	}
	return from, to, nil
}

// leftAt reads the version a failed run left the database at, or returns -1.
// It runs after ctx may have expired, so it has its own short deadline, and
// it takes no lock, so it never waits for another run.
func leftAt(ctx context.Context, pool *pgxpool.Pool) int64 {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	v, err := TenantVersion(ctx, pool)
	if err != nil {
		return -1
	}
	return v
}

// checkTarget returns an error unless target is 0 or the version of
// one of sources.
func checkTarget(sources []*goose.Source, target int64) error {
	if target == 0 {
		return nil
	}
	for _, s := range sources {
		if s.Version == target {
			return nil
		}
	}
	// goose.NewProvider refuses a directory without migrations, so sources
	// has a first and a last.
	return fmt.Errorf("no tenant migration has version %d: versions go from %d to %d, and 0 undoes them all",
		target, sources[0].Version, sources[len(sources)-1].Version)
}

// TenantVersion returns the applied version of the tenant database q is
// connected to, read from its version table: 0 when the table does not exist
// yet. It changes nothing, so it is safe inside a read-only transaction and
// beside a running migration (which it does not wait for). ctx bounds the
// queries.
func TenantVersion(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int64, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, TenantVersionTable).Scan(&exists); err != nil {
		return 0, fmt.Errorf("tenant version table: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v int64
	err := q.QueryRow(ctx, `SELECT coalesce(max(version_id), 0) FROM `+
		pgx.Identifier{TenantVersionTable}.Sanitize()+` WHERE is_applied`).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("tenant version: %w", err)
	}
	return v, nil
}
