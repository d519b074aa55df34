package provisioner

import (
	"context"
	"errors"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/silo-db/silo"
)

// maintainArgs asks for template and warm pool upkeep: of one shard, or of
// every active shard when Shard is "".
type maintainArgs struct {
	Shard string `json:"shard,omitempty"`
}

func (maintainArgs) Kind() string { return "silo_maintain_shards" }

type maintainWorker struct {
	river.WorkerDefaults[maintainArgs]
	p *Provisioner
}

func (w *maintainWorker) Work(ctx context.Context, job *river.Job[maintainArgs]) error {
	return w.p.maintain(ctx, job.Args.Shard)
}

// purgeSweepArgs asks for the purge of deleted tenants past their grace
// period.
type purgeSweepArgs struct{}

func (purgeSweepArgs) Kind() string { return "silo_purge_expired" }

type purgeSweepWorker struct {
	river.WorkerDefaults[purgeSweepArgs]
	p *Provisioner
}

func (w *purgeSweepWorker) Work(ctx context.Context, _ *river.Job[purgeSweepArgs]) error {
	return w.p.PurgeExpired(silo.WithActor(ctx, silo.Actor{Name: "system"}))
}

// uniqueOpts keeps one pending job per kind and arguments.
func uniqueOpts() *river.InsertOpts {
	return &river.InsertOpts{UniqueOpts: river.UniqueOpts{
		ByArgs: true,
		ByState: []rivertype.JobState{
			rivertype.JobStateAvailable, rivertype.JobStatePending,
			rivertype.JobStateRunning, rivertype.JobStateScheduled,
		},
	}}
}

// refillDelay lets a burst of creates finish before refill clones compete
// with them for the shard's disk.
const refillDelay = 2 * time.Second

// refillSoon asks, off the request's path, for a shard's warm pool to be
// topped up shortly after a claim; one refill is pending at a time.
func (p *Provisioner) refillSoon(ctx context.Context, shard string) {
	p.inflight.Add(1)
	go func() {
		defer p.inflight.Done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		opts := uniqueOpts()
		opts.ScheduledAt = time.Now().Add(refillDelay)
		client := p.eng.River()
		if client == nil {
			return // the engine is not running: the periodic upkeep refills
		}
		if _, err := client.Insert(ctx, maintainArgs{Shard: shard}, opts); err != nil {
			p.log.Warn("cannot schedule a warm pool refill", "shard", shard, "err", err)
		}
	}()
}

// PurgeExpired purges deleted tenants whose grace period is over. It runs
// every minute on one server; it is exported for tests and operators.
func (p *Provisioner) PurgeExpired(ctx context.Context) error {
	ids, err := p.store.ExpiredTenants(ctx, time.Now(), 100)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if _, err := p.lifecycle(ctx, id, silo.OpPurge, time.Minute); err != nil && silo.ErrorCode(err) != silo.ECONFLICT {
			errs = append(errs, err)
		}
	}
	// Moved tenants' old databases, past their grace period.
	retired, err := p.store.ExpiredRetiredDatabases(ctx, time.Now(), 100)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, r := range retired {
		if err := silo.ValidateRetiredName(r.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		sc, err := p.shard(ctx, r.Shard)
		if err == nil {
			err = p.dropDatabaseAndRole(ctx, sc, r.Shard, r.Name)
		}
		if err == nil {
			err = p.store.ForgetRetiredDatabase(ctx, nil, r.Shard, r.Name)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p.log.Info("retired database dropped", "shard", r.Shard, "database", r.Name, "tenant", r.TenantID)
	}
	return errors.Join(errs...)
}
