package migrations

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/silo-db/silo/shardmap"
)

// recoverAfter is how long a run's work must have been left alone before
// recovery takes it: longer than the moment between a job's start and its
// taking of the lease.
const recoverAfterSeconds = 2

// Recover queues again the work of a run whose server died (an
// engine.Recoverer; the engine calls it every few seconds on every
// server): a prepare whose lease is free with no job waiting for it, and
// tenants left "running" whose lock is free with no job waiting for them.
// River would rescue their jobs only after its stuck-job timeout, over an
// hour; their leases tell at once. A job queued twice is harmless: the
// second finds the lease taken, or the tenant done.
func (r *Runner) Recover(ctx context.Context) error {
	client, err := r.jobs()
	if err != nil {
		return err
	}
	rows, err := r.cfg.Catalog.Query(ctx, `
		SELECT r.id::text FROM migration_runs r
		WHERE r.state = 'preparing' AND r.updated_at < now() - make_interval(secs => $1)
		  AND NOT EXISTS (
			SELECT 1 FROM pg_catalog.pg_locks l
			WHERE l.locktype = 'advisory' AND l.objsubid = 2
			  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
			  AND l.classid::bigint = $2 AND l.objid::bigint = (hashtext(r.id::text)::bigint & 4294967295))
		  AND NOT EXISTS (
			SELECT 1 FROM river_job j
			WHERE j.kind = 'silo_migrate_prepare' AND j.args->>'run_id' = r.id::text
			  AND j.state IN ('available', 'pending', 'retryable', 'scheduled'))`,
		recoverAfterSeconds, prepareLockClass)
	if err != nil {
		return shardmap.CatalogError(err, "tenant migrations: look for runs to recover")
	}
	runs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return shardmap.CatalogError(err, "tenant migrations: look for runs to recover")
	}
	var errs []error
	for _, id := range runs {
		r.log.Info("migration run's preparing server is gone; preparing it again", "run", id)
		if _, err := client.Insert(ctx, prepareArgs{RunID: id}, &river.InsertOpts{Queue: queue, MaxAttempts: 5}); err != nil {
			errs = append(errs, err)
		}
	}

	rows, err = r.cfg.Catalog.Query(ctx, `
		SELECT t.run_id::text, t.tenant_id FROM migration_tenants t JOIN migration_runs r ON r.id = t.run_id
		WHERE r.state IN ('running', 'canary')
		  AND (
			-- Left running by its server.
			(t.state = 'running' AND t.started_at < now() - make_interval(secs => $1))
			-- Or its job was taken by a server that died before starting it.
			OR (t.state = 'pending' AND EXISTS (
				SELECT 1 FROM river_job j
				WHERE j.kind = 'silo_migrate_tenant' AND j.args->>'run_id' = t.run_id::text AND j.args->>'tenant_id' = t.tenant_id
				  AND j.state = 'running' AND j.attempted_at < now() - interval '30 seconds')))
		  AND NOT EXISTS (
			SELECT 1 FROM pg_catalog.pg_locks l
			WHERE l.locktype = 'advisory' AND l.objsubid = 2
			  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
			  AND l.classid::bigint = $2 AND l.objid::bigint = (hashtext(t.tenant_id)::bigint & 4294967295))
		  AND NOT EXISTS (
			SELECT 1 FROM river_job j
			WHERE j.kind = 'silo_migrate_tenant' AND j.args->>'run_id' = t.run_id::text AND j.args->>'tenant_id' = t.tenant_id
			  AND j.state IN ('available', 'pending', 'retryable', 'scheduled'))
		LIMIT 1000`, recoverAfterSeconds, TenantLockClass)
	if err != nil {
		return errors.Join(append(errs, shardmap.CatalogError(err, "tenant migrations: look for tenants to recover"))...)
	}
	orphans, err := pgx.CollectRows(rows, pgx.RowToStructByPos[tenantArgs])
	if err != nil {
		return errors.Join(append(errs, shardmap.CatalogError(err, "tenant migrations: look for tenants to recover"))...)
	}
	if len(orphans) > 0 {
		r.log.Info("migration run: tenants whose server is gone are queued again", "tenants", len(orphans))
		params := make([]river.InsertManyParams, len(orphans))
		for i, a := range orphans {
			params[i] = river.InsertManyParams{Args: a, InsertOpts: &river.InsertOpts{Queue: queue, MaxAttempts: 5}}
		}
		if _, err := client.InsertMany(ctx, params); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
