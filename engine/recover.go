package engine

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// Recovery. An operation runs on the server that took its request, under a
// lease: a session advisory lock on the catalog, which PostgreSQL releases
// the moment that server's connection dies (a crash, a SIGKILL, a network
// cut). Every server sweeps the catalog every RecoveryDelay or so for
// running operations whose lease is free and that no River job is waiting
// to run, and queues a job for each: the first server with a free slot
// resumes it. Each server also holds a lease of its own (lease.go): a River
// job shown running on a server whose lease is free is made available
// again, for every job kind (a migration run's prepare and tenants, upkeep).
// River's own rescue of a job whose server died waits longer than any job
// may run (over an hour); the leases tell in seconds.

const operationQueue = "silo_operation"

// operationArgs is the job that resumes one operation. Since is the
// operation's updated_at when it was queued: a job queued again after the
// operation moved on is a new job, not a duplicate of one a dead server
// left "running".
type operationArgs struct {
	OperationID string `json:"operation_id"`
	Since       int64  `json:"since"`
}

func (operationArgs) Kind() string { return "silo_operation" }

type operationWorker struct {
	river.WorkerDefaults[operationArgs]
	e *Engine
}

// Work resumes an operation. Another server running it is left to it (if
// it dies, the sweep queues the operation again); an operation that cannot
// finish yet returns an error, so River retries it.
func (w *operationWorker) Work(ctx context.Context, job *river.Job[operationArgs]) error {
	e := w.e
	select {
	case e.slots <- struct{}{}:
		defer func() { <-e.slots }()
	case <-ctx.Done():
		return ctx.Err()
	}
	ctx = silo.WithActor(ctx, silo.Actor{Name: "system"})
	op, err := e.execute(ctx, job.Args.OperationID)
	switch {
	case errors.Is(err, errLocked):
		return nil
	case err != nil:
		return err
	case !op.Done():
		return errors.New("operation not finished yet; retrying")
	}
	return nil
}

// NextRetry retries an operation that cannot finish yet (a shard down)
// within half a minute at most: past its pivot it must go forward as soon
// as it can.
func (w *operationWorker) NextRetry(job *river.Job[operationArgs]) time.Time {
	d := time.Second << min(job.Attempt, 5)
	return time.Now().Add(min(d, 30*time.Second))
}

func (w *operationWorker) Timeout(*river.Job[operationArgs]) time.Duration { return w.e.cfg.MaxRunTime }

// recoverLoop sweeps until the engine stops.
func (e *Engine) recoverLoop() {
	for {
		ctx, cancel := context.WithTimeout(e.base, 2*e.cfg.RecoveryDelay+5*time.Second)
		if err := e.keepServerLease(ctx); err != nil && !e.isStopping() {
			e.log.Warn("engine: cannot take the server's lease; trying again", "err", err)
		}
		if err := e.Sweep(ctx); err != nil && !e.isStopping() {
			e.log.Warn("recovery sweep failed; trying again", "err", err)
		}
		cancel()
		// Jittered, so servers started together do not sweep together.
		wait := e.cfg.RecoveryDelay/2 + rand.N(e.cfg.RecoveryDelay/2)
		select {
		case <-time.After(wait):
		case <-e.stopping:
			return
		}
	}
}

// Sweep queues a recovery job for every running operation whose lease is
// free, that has not changed for RecoveryDelay and that no job waits to
// run; then makes the River jobs of servers that are gone available again.
// It runs on every server every RecoveryDelay or so; exported for tests.
func (e *Engine) Sweep(ctx context.Context) error {
	client := e.River()
	if client == nil {
		return errors.New("engine: not started")
	}
	rows, err := e.catalog.Query(ctx, `
		SELECT o.id::text, (extract(epoch FROM o.updated_at) * 1000000)::bigint
		FROM operations o
		WHERE o.state = 'running'
		  AND o.updated_at < now() - make_interval(secs => $1)
		  AND NOT EXISTS (
			SELECT 1 FROM pg_catalog.pg_locks l
			WHERE l.locktype = 'advisory' AND l.objsubid = 2
			  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
			  AND l.classid::bigint = $2 AND l.objid::bigint = (hashtext(o.id::text)::bigint & 4294967295))
		  AND NOT EXISTS (
			SELECT 1 FROM river_job j
			WHERE j.kind = 'silo_operation' AND j.args @> jsonb_build_object('operation_id', o.id::text)
			  AND j.state IN ('available', 'pending', 'retryable', 'scheduled'))
		ORDER BY o.updated_at
		LIMIT 100`, e.cfg.RecoveryDelay.Seconds(), lockClass)
	if err != nil {
		return shardmap.CatalogError(err, "look for operations to recover")
	}
	orphans, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (operationArgs, error) {
		var a operationArgs
		return a, row.Scan(&a.OperationID, &a.Since)
	})
	if err != nil {
		return shardmap.CatalogError(err, "look for operations to recover")
	}
	var errs []error
	for _, a := range orphans {
		res, err := client.Insert(ctx, a, &river.InsertOpts{
			Queue:       operationQueue,
			MaxAttempts: 25, // then the sweep queues it again
			UniqueOpts:  river.UniqueOpts{ByArgs: true},
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !res.UniqueSkippedAsDuplicate {
			e.metrics.recovered.Inc()
			e.log.Info("operation's server is gone; resuming it", "operation", a.OperationID)
		}
	}
	if err := e.rescueJobs(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// rescueJobs makes the jobs of servers that are gone available again: River
// shows them running, and would rescue them only after its stuck-job
// timeout (over an hour), while a server's lease tells at once that it died.
// This is River's own rescue (the same update of its job table, an error
// recorded in the job), on that better signal. Every Silo job is
// idempotent and takes its own lock, so one rescued from a server that was
// only cut off from the catalog for a moment runs harmlessly twice.
func (e *Engine) rescueJobs(ctx context.Context) error {
	// A job is rescued only when its server's lease was free at two sweeps
	// in a row: a live server whose lease connection broke takes it again
	// at its next sweep.
	rows, err := e.catalog.Query(ctx, `
		SELECT j.id FROM river_job j
		WHERE j.state = 'running' AND j.attempted_at < now() - make_interval(secs => $1)
		  AND `+serverGoneSQL, e.cfg.RecoveryDelay.Seconds())
	if err != nil {
		return shardmap.CatalogError(err, "look for the jobs of servers that are gone")
	}
	suspects, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return shardmap.CatalogError(err, "look for the jobs of servers that are gone")
	}
	var again []int64
	for _, id := range suspects {
		if e.suspects[id] {
			again = append(again, id)
		}
	}
	e.suspects = make(map[int64]bool, len(suspects))
	for _, id := range suspects {
		e.suspects[id] = true
	}
	if len(again) == 0 {
		return nil
	}
	rows, err = e.catalog.Query(ctx, `
		UPDATE river_job j
		SET state = 'available', scheduled_at = now(),
		    errors = array_append(j.errors, jsonb_build_object(
		        'at', now(), 'attempt', j.attempt,
		        'error', 'rescued by silo: the server that ran it is gone (its lease on the catalog is free)', 'trace', '')),
		    metadata = j.metadata || jsonb_build_object('silo:rescued_from', j.attempted_by[cardinality(j.attempted_by)])
		WHERE j.id = ANY($2) AND j.state = 'running' AND j.attempted_at < now() - make_interval(secs => $1)
		  AND `+serverGoneSQL+`
		RETURNING j.id, j.kind`, e.cfg.RecoveryDelay.Seconds(), again)
	if err != nil {
		return shardmap.CatalogError(err, "rescue the jobs of servers that are gone")
	}
	type rescued struct {
		ID   int64
		Kind string
	}
	jobs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[rescued])
	if err != nil {
		return shardmap.CatalogError(err, "rescue the jobs of servers that are gone")
	}
	for _, j := range jobs {
		e.metrics.rescued.WithLabelValues(j.Kind).Inc()
		e.log.Info("job's server is gone; rescued", "job", j.ID, "kind", j.Kind)
	}
	return nil
}
