package migrations

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pressly/goose/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
	"github.com/silo-db/silo/tracing"
)

// Span attributes of the runner's own.
const (
	attrAttempt = attribute.Key("silo.migration.attempt")
	attrTarget  = attribute.Key("silo.migration.target_version")
	attrFrom    = attribute.Key("silo.migration.from_version")
	attrTo      = attribute.Key("silo.migration.to_version")
)

// prepareArgs is a run's first job: migrate the templates, list the
// tenants, queue the first wave.
type prepareArgs struct {
	RunID string `json:"run_id"`
	// Traceparent is the trace of the request that started the run, if
	// traces are on: the run's spans are in it.
	Traceparent string `json:"traceparent,omitempty"`
}

func (prepareArgs) Kind() string { return "silo_migrate_prepare" }

type prepareWorker struct {
	river.WorkerDefaults[prepareArgs]
	r *Runner
}

// Work prepares the run. A failure shows in the run's error while River
// retries; after the last attempt the run fails.
func (w *prepareWorker) Work(ctx context.Context, job *river.Job[prepareArgs]) error {
	// The lease: a second job for the run (queued by recovery while this
	// one started) leaves it to this one; if this server dies, the lease
	// goes with its connection and recovery queues the run's prepare again.
	conn, err := w.r.cfg.Catalog.Acquire(ctx)
	if err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	defer conn.Release()
	var mine bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, hashtext($2))`, prepareLockClass, job.Args.RunID).Scan(&mine); err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	if !mine {
		// Another copy of the job prepares the run (queued again by a
		// recovery while it started): wait, rather than end as done, in
		// case that one fails.
		return river.JobSnooze(5 * time.Second)
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1, hashtext($2))`, prepareLockClass, job.Args.RunID); err != nil {
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
	}()
	ctx, span := w.r.tracer.Start(tracing.WithTraceparent(ctx, job.Args.Traceparent), "migration.prepare",
		trace.WithAttributes(tracing.MigrationRun.String(job.Args.RunID), attrAttempt.Int(job.Attempt)))
	defer span.End()
	err = w.r.prepare(silo.WithActor(ctx, silo.Actor{Name: "system"}), job.Args.RunID)
	if err == nil || ctx.Err() != nil {
		return err
	}
	span.SetStatus(codes.Error, truncate(err.Error(), 1000))
	bctx := context.WithoutCancel(ctx)
	if job.Attempt >= job.MaxAttempts {
		return w.r.fail(bctx, job.Args.RunID, "preparing the run failed: "+truncate(err.Error(), 1000))
	}
	if _, uerr := w.r.cfg.Catalog.Exec(bctx, `
		UPDATE migration_runs SET error = $2, updated_at = now() WHERE id = $1 AND state = 'preparing'`,
		job.Args.RunID, fmt.Sprintf("preparing, attempt %d of %d failed (retrying): %s", job.Attempt, job.MaxAttempts, truncate(err.Error(), 1000))); uerr != nil {
		w.r.log.WarnContext(ctx, "migration run error not recorded", "run", job.Args.RunID, "err", uerr)
	}
	return err
}

// tenantArgs is one tenant's migration in a run.
type tenantArgs struct {
	RunID    string `json:"run_id"`
	TenantID string `json:"tenant_id"`
	// Traceparent is the run's preparation span: every tenant's span is
	// its child.
	Traceparent string `json:"traceparent,omitempty"`
}

func (tenantArgs) Kind() string { return "silo_migrate_tenant" }

type tenantWorker struct {
	river.WorkerDefaults[tenantArgs]
	r *Runner
}

func (w *tenantWorker) Work(ctx context.Context, job *river.Job[tenantArgs]) error {
	ctx = context.WithValue(ctx, runTraceKey{}, job.Args.Traceparent)
	return w.r.migrateOne(tracing.WithTraceparent(ctx, job.Args.Traceparent), job.Args.RunID, job.Args.TenantID)
}

// runTraceKey holds, in a tenant job's context, the traceparent the run's
// tenants share, for the next wave that the job may queue.
type runTraceKey struct{}

// runTraceparent returns the traceparent for a wave of tenant jobs: the
// one the run's tenants share, or, in the run's preparation, its span.
func runTraceparent(ctx context.Context) string {
	if tp, ok := ctx.Value(runTraceKey{}).(string); ok {
		return tp
	}
	return tracing.Traceparent(ctx)
}

func (w *tenantWorker) Timeout(*river.Job[tenantArgs]) time.Duration {
	return w.r.cfg.TenantTimeout + time.Minute // the slot wait and the bookkeeping
}

// prepare migrates every active shard's template (and so its warm pool),
// then lists the tenants to migrate, interleaving shards, and queues the
// canary wave (or everyone). It is idempotent: a run already past
// preparing is left alone.
func (r *Runner) prepare(ctx context.Context, id string) error {
	run, err := r.Run(ctx, id)
	if err != nil {
		if silo.ErrorCode(err) == silo.ENOTFOUND {
			return nil
		}
		return err
	}
	if run.State != silo.RunPreparing {
		return nil
	}
	rows, err := r.cfg.Catalog.Query(ctx, `SELECT name FROM shards WHERE state = 'active' ORDER BY name`)
	if err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	shards, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	for _, shard := range shards {
		err := r.cfg.Templates.MigrateTemplate(ctx, shard, run.TargetVersion)
		switch {
		case err == nil:
		case silo.ErrorCode(err) == silo.EUNAVAILABLE:
			// Its tenants will fail fast and be retried by the next run;
			// its template catches up when the shard is back.
			r.log.WarnContext(ctx, "migration run: shard template not migrated; shard unavailable", "run", id, "shard", shard, "err", err)
		case transient(err):
			return err // River tries the job again
		default:
			return r.fail(ctx, id, fmt.Sprintf("the template of shard %q did not migrate, so no tenant was touched: %v", shard, err))
		}
	}

	if err := r.eng.Failpoint(ctx, "migrate/prepare"); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, r.cfg.Catalog, func(tx pgx.Tx) error {
		var state string
		if err := tx.QueryRow(ctx, `SELECT state FROM migration_runs WHERE id = $1 FOR UPDATE`, id).Scan(&state); err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		if state != silo.RunPreparing {
			return nil // stopped meanwhile, or prepared by another attempt
		}
		cmp := "<"
		if run.Direction == silo.MigrateDown {
			cmp = ">"
		}
		rows, err := tx.Query(ctx, `
			SELECT id, shard FROM tenants
			WHERE state = 'active' AND schema_version `+cmp+` $1
			ORDER BY shard, id`, run.TargetVersion)
		if err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		type tenant struct{ id, shard string }
		list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (tenant, error) {
			var t tenant
			return t, row.Scan(&t.id, &t.shard)
		})
		if err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		// Interleave shards, so that every wave (the canary first) and the
		// queue's order spread the load over them.
		byShard := map[string][]string{}
		var order []string
		for _, t := range list {
			if _, ok := byShard[t.shard]; !ok {
				order = append(order, t.shard)
			}
			byShard[t.shard] = append(byShard[t.shard], t.id)
		}
		ids := make([]string, 0, len(list))
		shardOf := make([]string, 0, len(list))
		for i := 0; len(ids) < len(list); i++ {
			for _, s := range order {
				if i < len(byShard[s]) {
					ids = append(ids, byShard[s][i])
					shardOf = append(shardOf, s)
				}
			}
		}
		canary := min(run.Canary, len(ids))
		canaries := make([]bool, len(ids))
		positions := make([]int32, len(ids))
		for i := range ids {
			canaries[i] = i < canary
			positions[i] = int32(i)
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO migration_tenants (run_id, tenant_id, shard, canary, position)
			SELECT $1, t.id, t.shard, t.canary, t.position
			FROM unnest($2::text[], $3::text[], $4::bool[], $5::int[]) AS t(id, shard, canary, position)`,
			id, ids, shardOf, canaries, positions); err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		next := silo.RunRunning
		wave := ids
		switch {
		case len(ids) == 0:
			r.log.InfoContext(ctx, "migration run: every tenant is at the target already", "run", id, "target", run.TargetVersion)
			_, err := tx.Exec(ctx, `
				UPDATE migration_runs SET state = 'succeeded', updated_at = now(), finished_at = now() WHERE id = $1`, id)
			r.metrics.runs.WithLabelValues(silo.RunSucceeded).Inc()
			return shardmap.CatalogError(err, "tenant migrations")
		case canary > 0:
			next, wave = silo.RunCanary, ids[:canary]
		}
		if _, err := tx.Exec(ctx, `
			UPDATE migration_runs SET state = $2, total = $3, updated_at = now() WHERE id = $1`, id, next, len(ids)); err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		r.log.InfoContext(ctx, "migration run prepared", "run", id, "tenants", len(ids), "canary", canary, "shards", len(order))
		return r.queue(ctx, tx, id, wave)
	})
}

// queue inserts the jobs of a wave of tenants, in order.
func (r *Runner) queue(ctx context.Context, tx pgx.Tx, runID string, ids []string) error {
	params := make([]river.InsertManyParams, len(ids))
	tp := runTraceparent(ctx)
	for i, t := range ids {
		params[i] = river.InsertManyParams{Args: tenantArgs{RunID: runID, TenantID: t, Traceparent: tp},
			InsertOpts: &river.InsertOpts{Queue: queue, MaxAttempts: 5}}
	}
	if len(params) == 0 {
		return nil
	}
	client, err := r.jobs()
	if err != nil {
		return err
	}
	_, err = client.InsertManyFastTx(ctx, tx, params)
	return err
}

// fail ends a run as failed, with why.
func (r *Runner) fail(ctx context.Context, id, msg string) error {
	r.log.WarnContext(ctx, "migration run failed", "run", id, "err", msg)
	r.metrics.runs.WithLabelValues(silo.RunFailed).Inc()
	return pgx.BeginFunc(ctx, r.cfg.Catalog, func(tx pgx.Tx) error {
		return finishRun(ctx, tx, id, silo.RunFailed, msg)
	})
}

// errBusy means a slot or the tenant is taken: try again shortly.
var errBusy = errors.New("busy")

// migrateOne migrates one tenant of a run. A tenant that fails is recorded
// with its error and SQLSTATE, and the job succeeds (the run decides what
// follows); a job cut short (the server stopping) puts the tenant back to
// pending and fails, so River retries it, here or on another server.
func (r *Runner) migrateOne(ctx context.Context, runID, tenantID string) error {
	var run silo.MigrationRun
	var state, shard string
	err := r.cfg.Catalog.QueryRow(ctx, `
		SELECT r.state, r.target_version, r.concurrency, r.per_shard, t.state, t.shard
		FROM migration_runs r JOIN migration_tenants t ON t.run_id = r.id
		WHERE r.id = $1 AND t.tenant_id = $2`, runID, tenantID).Scan(
		&run.State, &run.TargetVersion, &run.Concurrency, &run.PerShard, &state, &shard)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	run.ID = runID
	if state != silo.RunTenantPending && state != silo.RunTenantRunning {
		return nil // done, failed or skipped already
	}
	if !run.Active() {
		return nil // its end skipped this tenant
	}

	// A session on the catalog holds this migration's slots and the
	// tenant's lock; they go with it, however the job ends.
	conn, err := r.cfg.Catalog.Acquire(ctx)
	if err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock_all()`); err != nil {
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
		conn.Release()
	}()
	if err := r.takeSlots(ctx, conn, &run, shard, tenantID); err != nil {
		if errors.Is(err, errBusy) {
			return river.JobSnooze(time.Duration(200+rand.IntN(300)) * time.Millisecond)
		}
		return err
	}
	// The span of the tenant's migration: from the slots taken, so that a
	// job snoozed while the run is at its limits makes none.
	ctx, span := r.tracer.Start(ctx, "migration.tenant", trace.WithAttributes(tracing.MigrationRun.String(runID),
		tracing.TenantID.String(tenantID), tracing.Shard.String(shard), attrTarget.Int64(run.TargetVersion)))
	defer span.End()

	if err := pgx.BeginFunc(ctx, r.cfg.Catalog, func(tx pgx.Tx) error {
		if err := asyncCommit(ctx, tx); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
			UPDATE migration_tenants SET state = 'running', attempts = attempts + 1, started_at = now()
			WHERE run_id = $1 AND tenant_id = $2`, runID, tenantID)
		return err
	}); err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	start := time.Now()
	from, to, skip, err := r.migrateTenant(ctx, &run, tenantID)
	if err != nil && ctx.Err() != nil {
		// Cut short: not the tenant's fault. Pending again, retried.
		span.SetAttributes(tracing.Outcome.String("interrupted"))
		_, _ = r.cfg.Catalog.Exec(context.WithoutCancel(ctx), `
			UPDATE migration_tenants SET state = 'pending' WHERE run_id = $1 AND tenant_id = $2`, runID, tenantID)
		return err
	}
	outcome := "done"
	switch {
	case skip != "":
		outcome = "skipped"
	case err != nil:
		outcome = "failed"
	}
	span.SetAttributes(tracing.Outcome.String(outcome), attrFrom.Int64(from))
	switch {
	case err != nil:
		// The error is logged and kept in the run as it is here.
		span.SetStatus(codes.Error, truncate(tenantError(err), 1000))
	case skip == "":
		span.SetAttributes(attrTo.Int64(to))
	}
	r.metrics.tenants.WithLabelValues(outcome).Inc()
	r.metrics.duration.WithLabelValues(shard).Observe(time.Since(start).Seconds())
	// Recorded even when the job's context ends now: the work is done.
	bctx := context.WithoutCancel(ctx)
	defer func() { _ = r.eng.Failpoint(bctx, "migrate/mid-fleet") }() // a tenant done, the rest not
	return pgx.BeginFunc(bctx, r.cfg.Catalog, func(tx pgx.Tx) error {
		if err := asyncCommit(bctx, tx); err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		var werr error
		switch {
		case skip != "":
			_, werr = tx.Exec(bctx, `
				UPDATE migration_tenants SET state = 'skipped', error = $3, finished_at = now()
				WHERE run_id = $1 AND tenant_id = $2`, runID, tenantID, skip)
		case err != nil:
			r.log.WarnContext(ctx, "tenant migration failed", "run", runID, "tenant", tenantID, "shard", shard, "err", err)
			_, werr = tx.Exec(bctx, `
				UPDATE migration_tenants SET state = 'failed', from_version = $3, error = $4, sqlstate = $5, finished_at = now()
				WHERE run_id = $1 AND tenant_id = $2`, runID, tenantID, from, truncate(tenantError(err), 2000), sqlState(err))
		default:
			_, werr = tx.Exec(bctx, `
				UPDATE migration_tenants SET state = 'done', from_version = $3, to_version = $4, error = '', sqlstate = '', finished_at = now()
				WHERE run_id = $1 AND tenant_id = $2`, runID, tenantID, from, to)
			if werr == nil {
				_, werr = tx.Exec(bctx, `UPDATE tenants SET schema_version = $2, updated_at = now() WHERE id = $1`, tenantID, to)
			}
		}
		if werr != nil {
			return shardmap.CatalogError(werr, "tenant migrations")
		}
		return r.advance(bctx, tx, runID)
	})
}

// asyncCommit lets a transaction of the run's bookkeeping commit without
// waiting for its WAL to reach the disk: a tenant's migration then costs
// one fsync (its own database's), not three. It is safe because the
// tenant's database is the truth: should the catalog lose the commit in a
// crash, it also loses the job's completion, which River writes later with
// a synchronous commit (WAL is flushed in order), so the job runs again,
// finds the tenant at its target, applies nothing, and records it.
func asyncCommit(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = off`)
	return err
}

// takeSlots takes, on conn, a fleet-wide slot and a slot on the tenant's
// shard (session advisory locks, at most Concurrency and PerShard of each),
// and the tenant's own lock. It waits a little for them, then gives up with
// errBusy so that the job is snoozed and the worker moves on.
func (r *Runner) takeSlots(ctx context.Context, conn *pgxpool.Conn, run *silo.MigrationRun, shard, tenantID string) error {
	try := func(key string) (bool, error) {
		var ok bool
		err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, hashtext($2))`, slotClass, key).Scan(&ok)
		return ok, shardmap.CatalogError(err, "tenant migrations")
	}
	tryAny := func(prefix string, n int) (bool, error) {
		first := rand.IntN(n)
		for i := range n {
			ok, err := try(fmt.Sprintf("%s:%d", prefix, (first+i)%n))
			if ok || err != nil {
				return ok, err
			}
		}
		return false, nil
	}
	deadline := time.Now().Add(2 * time.Second)
	var haveGlobal, haveShard bool
	for {
		var err error
		if !haveGlobal {
			if haveGlobal, err = tryAny("run:"+run.ID, run.Concurrency); err != nil {
				return err
			}
		}
		if haveGlobal && !haveShard {
			if haveShard, err = tryAny("run:"+run.ID+":shard:"+shard, run.PerShard); err != nil {
				return err
			}
		}
		if haveGlobal && haveShard {
			break
		}
		if time.Now().After(deadline) {
			return errBusy
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(10+rand.IntN(20)) * time.Millisecond):
		}
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, hashtext($2))`, TenantLockClass, tenantID).Scan(&ok); err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	if !ok {
		return errBusy // being moved, or migrated by a straggler of another attempt
	}
	// A lifecycle operation in progress (suspend, delete) goes first.
	var busy bool
	if err := conn.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM operations WHERE tenant_id = $1 AND state = 'running')`, tenantID).Scan(&busy); err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	if busy {
		return errBusy
	}
	return nil
}

// migrateTenant connects to the tenant's database as its own role (so that
// what the migrations make belongs to the tenant) and migrates it to the
// run's target. skip is set, with why, for a tenant no longer to migrate.
func (r *Runner) migrateTenant(ctx context.Context, run *silo.MigrationRun, id string) (from, to int64, skip string, err error) {
	t, err := r.cfg.Store.GetTenant(ctx, id)
	if silo.ErrorCode(err) == silo.ENOTFOUND {
		return 0, 0, "the tenant is gone", nil
	}
	if err != nil {
		return 0, 0, "", err
	}
	if t.State == silo.TenantSuspended {
		return t.SchemaVersion, 0, "the tenant is suspended: it is migrated when it is resumed", nil
	}
	if t.State != silo.TenantActive {
		return t.SchemaVersion, 0, "the tenant is " + string(t.State), nil
	}
	from = t.SchemaVersion
	downKey := run.ID + "/" + t.Shard
	r.mu.Lock()
	down, isDown := r.down[downKey]
	r.mu.Unlock()
	if isDown && time.Since(down.at) < shardDownFor {
		return from, 0, "", fmt.Errorf("shard %q is unreachable: %w", t.Shard, down.err)
	}
	// As the tenant's own login role, never the admin with SET ROLE: the
	// tenant's triggers, views and functions (on the version table, say)
	// run in this session, and RESET ROLE would undo a SET ROLE.
	cfg, err := r.cfg.Dialer.TenantConfig(ctx, t, "")
	if err != nil {
		return from, 0, "", err
	}
	pool, err := shardmap.PoolOf(ctx, cfg, 2)
	if err != nil {
		return from, 0, "", err
	}
	defer pool.Close()
	mctx, cancel := context.WithTimeout(ctx, r.cfg.TenantTimeout)
	defer cancel()
	err = pool.Ping(mctx)
	if shardmap.IsAuthFailure(err) {
		// The tenant changed its role's password: set it back, once.
		if err = r.cfg.Dialer.RepairLogin(mctx, t, ""); err == nil {
			err = pool.Ping(mctx)
		}
	}
	if err != nil {
		if _, ok := errors.AsType[*pgconn.PgError](err); !ok && ctx.Err() == nil {
			r.mu.Lock()
			r.down[downKey] = shardDown{at: time.Now(), err: err}
			r.mu.Unlock()
		}
		return from, 0, "", fmt.Errorf("connect to shard %q: %w", t.Shard, err)
	}
	r.mu.Lock()
	delete(r.down, downKey)
	for k, d := range r.down {
		if time.Since(d.at) > shardDownFor {
			delete(r.down, k) // of runs long gone
		}
	}
	r.mu.Unlock()
	from, to, err = MigrateTenantTo(mctx, pool, r.cfg.Files, run.TargetVersion)
	return from, to, "", err
}

// advance moves a run on after a tenant finished, in the tenant's
// transaction, with the run's row locked so that exactly one finisher
// moves it: from the canary wave to the rest, or to its end.
func (r *Runner) advance(ctx context.Context, tx pgx.Tx, id string) error {
	run, err := scanRun(tx.QueryRow(ctx, `SELECT `+runColumns+` FROM migration_runs WHERE id = $1 FOR UPDATE`, id))
	if err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	if run.State != silo.RunCanary && run.State != silo.RunRunning {
		return nil
	}
	var open, canaryOpen, failed int
	var firstFailure string
	if err := tx.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE state IN ('pending', 'running')),
		       count(*) FILTER (WHERE state IN ('pending', 'running') AND canary),
		       count(*) FILTER (WHERE state = 'failed'),
		       coalesce(min(tenant_id || ': ' || error) FILTER (WHERE state = 'failed'), '')
		FROM migration_tenants WHERE run_id = $1`, id).Scan(&open, &canaryOpen, &failed, &firstFailure); err != nil {
		return shardmap.CatalogError(err, "tenant migrations")
	}
	switch {
	case run.State == silo.RunCanary && failed > 0:
		r.metrics.runs.WithLabelValues(silo.RunFailed).Inc()
		r.log.WarnContext(ctx, "migration run stopped: a canary failed", "run", id, "err", firstFailure)
		return finishRun(ctx, tx, id, silo.RunFailed,
			"a canary tenant failed, so the others were not touched: "+truncate(firstFailure, 1000))
	case run.State == silo.RunCanary && canaryOpen == 0:
		rows, err := tx.Query(ctx, `
			SELECT tenant_id FROM migration_tenants WHERE run_id = $1 AND state = 'pending' ORDER BY position`, id)
		if err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		rest, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		if _, err := tx.Exec(ctx, `UPDATE migration_runs SET state = 'running', updated_at = now() WHERE id = $1`, id); err != nil {
			return shardmap.CatalogError(err, "tenant migrations")
		}
		r.log.InfoContext(ctx, "migration run: canaries passed", "run", id, "rest", len(rest))
		if len(rest) > 0 {
			return r.queue(ctx, tx, id, rest)
		}
		return r.finishIfDone(ctx, tx, run, 0, 0, "")
	case failed > 0 && !run.ContinueOnError:
		r.metrics.runs.WithLabelValues(silo.RunFailed).Inc()
		r.log.WarnContext(ctx, "migration run stopped at a failure", "run", id, "err", firstFailure)
		return finishRun(ctx, tx, id, silo.RunFailed, "stopped at the first failure: "+truncate(firstFailure, 1000))
	}
	return r.finishIfDone(ctx, tx, run, open, failed, firstFailure)
}

// finishIfDone ends a run with no tenant left to migrate.
func (r *Runner) finishIfDone(ctx context.Context, tx pgx.Tx, run *silo.MigrationRun, open, failed int, firstFailure string) error {
	if open > 0 {
		return nil
	}
	if failed > 0 {
		r.metrics.runs.WithLabelValues(silo.RunFailed).Inc()
		what := "1 tenant failed"
		if failed > 1 {
			what = fmt.Sprintf("%d tenants failed; the first", failed)
		}
		return finishRun(ctx, tx, run.ID, silo.RunFailed, what+": "+truncate(firstFailure, 1000))
	}
	r.metrics.runs.WithLabelValues(silo.RunSucceeded).Inc()
	r.log.InfoContext(ctx, "migration run succeeded", "run", run.ID, "target", run.TargetVersion)
	_, err := tx.Exec(ctx, `
		UPDATE migration_runs SET state = 'succeeded', updated_at = now(), finished_at = now() WHERE id = $1`, run.ID)
	return shardmap.CatalogError(err, "tenant migrations")
}

// Status returns the fleet's tenant schema: versions per shard, the target,
// the failures not yet fixed, and the current (or latest) run.
func (r *Runner) Status(ctx context.Context) (*silo.MigrationStatus, error) {
	latest, err := LatestVersion(r.cfg.Files)
	if err != nil {
		return nil, silo.WrapError(err, silo.EINVALID, "%v", err)
	}
	target, err := TargetVersion(ctx, r.cfg.Catalog, func() (int64, error) { return latest, nil })
	if err != nil {
		return nil, err
	}
	st := &silo.MigrationStatus{LatestVersion: latest, TargetVersion: target}
	// One snapshot for the versions, the failures and the run, so that a
	// run seen finished never comes with tenants seen behind it.
	tx, err := r.cfg.Catalog.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, shardmap.CatalogError(err, "tenant migrations")
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	rows, err := tx.Query(ctx, `
		SELECT shard, schema_version, count(*) FROM tenants
		WHERE state IN ('active', 'suspended') GROUP BY shard, schema_version ORDER BY shard, schema_version`)
	if err != nil {
		return nil, shardmap.CatalogError(err, "tenant migrations")
	}
	for rows.Next() {
		var shard string
		var v int64
		var n int
		if err := rows.Scan(&shard, &v, &n); err != nil {
			return nil, shardmap.CatalogError(err, "tenant migrations")
		}
		if len(st.Shards) == 0 || st.Shards[len(st.Shards)-1].Shard != shard {
			st.Shards = append(st.Shards, silo.ShardVersions{Shard: shard, Versions: map[int64]int{}})
		}
		st.Shards[len(st.Shards)-1].Versions[v] = n
		if v != target {
			st.Behind += n
		}
	}
	if err := rows.Err(); err != nil {
		return nil, shardmap.CatalogError(err, "tenant migrations")
	}
	// Each tenant's latest failure, while it is still not at the target.
	rows, err = tx.Query(ctx, `
		SELECT f.tenant_id, f.shard, f.run_id, t.schema_version, f.error, f.sqlstate, f.finished_at
		FROM (SELECT DISTINCT ON (tenant_id) tenant_id, shard, run_id, state, error, sqlstate, finished_at
		      FROM migration_tenants WHERE state IN ('done', 'failed')
		      ORDER BY tenant_id, finished_at DESC) f
		JOIN tenants t ON t.id = f.tenant_id
		WHERE f.state = 'failed' AND t.state IN ('active', 'suspended') AND t.schema_version <> $1
		ORDER BY f.finished_at DESC LIMIT 100`, target)
	if err != nil {
		return nil, shardmap.CatalogError(err, "tenant migrations")
	}
	st.Failures, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (silo.MigrationFailure, error) {
		var f silo.MigrationFailure
		return f, row.Scan(&f.TenantID, &f.Shard, &f.RunID, &f.Version, &f.Error, &f.SQLState, &f.FinishedAt)
	})
	if err != nil {
		return nil, shardmap.CatalogError(err, "tenant migrations")
	}
	// The run in progress, else the latest (one run at a time: it is both).
	runs, err := r.runs(ctx, tx, 1)
	if err != nil {
		return nil, err
	}
	if len(runs) > 0 {
		st.Run = runs[0]
	}
	return st, nil
}

// Pending counts the active and suspended tenants below the latest version
// of the files: what `silo serve` reports at startup.
func (r *Runner) Pending(ctx context.Context) (pending int, latest int64, err error) {
	if latest, err = LatestVersion(r.cfg.Files); err != nil {
		return 0, 0, err
	}
	err = r.cfg.Catalog.QueryRow(ctx, `
		SELECT count(*) FROM tenants WHERE state IN ('active', 'suspended') AND schema_version < $1`, latest).Scan(&pending)
	return pending, latest, shardmap.CatalogError(err, "tenant migrations")
}

// tenantError says why a tenant's migration failed, PostgreSQL's own
// words first: goose's prefix would bury them.
func tenantError(err error) string {
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	if !ok {
		return err.Error()
	}
	msg := pgErr.Message
	if pgErr.Detail != "" {
		msg += ": " + pgErr.Detail
	}
	if partial, ok := errors.AsType[*goose.PartialError](err); ok && partial.Failed != nil && partial.Failed.Source != nil {
		msg += fmt.Sprintf(" (in %s)", path.Base(partial.Failed.Source.Path))
	}
	return msg
}

// transient tells errors worth trying again: serialization failures,
// deadlocks, lock timeouts, and DDL that raced other DDL on a shard's
// catalog ("tuple concurrently updated", XX000).
func transient(err error) bool {
	switch sqlState(err) {
	case "40001", "40P01", "55P03", "XX000":
		return true
	}
	return false
}

func sqlState(err error) string {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		return pgErr.Code
	}
	return ""
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

type runnerMetrics struct {
	runs     *prometheus.CounterVec
	tenants  *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newRunnerMetrics() runnerMetrics {
	return runnerMetrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "silo_migration_runs_total", Help: "Tenant migration runs ended, by outcome.",
		}, []string{"outcome"}),
		tenants: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "silo_migration_tenants_total", Help: "Tenant migrations finished, by outcome: done, failed, skipped.",
		}, []string{"outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "silo_migration_tenant_duration_seconds", Help: "Time to migrate one tenant database, connection included.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"shard"}),
	}
}

func (m runnerMetrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.runs, m.tenants, m.duration} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
