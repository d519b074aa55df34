package provisioner

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"time"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// maintain brings templates to the latest schema and warm pools to their
// size, for one shard or every active shard. A shard that fails is logged
// and does not stop the others.
func (p *Provisioner) maintain(ctx context.Context, shard string) error {
	var shards []string
	if shard != "" {
		shards = []string{shard}
	} else {
		list, err := p.store.ListShards(ctx, silo.Page{Limit: silo.MaxPageLimit})
		if err != nil {
			return err
		}
		for _, sh := range list.Items {
			if sh.State == silo.ShardActive {
				shards = append(shards, sh.Name)
			}
		}
	}
	var errs []error
	for _, name := range shards {
		if err := p.maintainShard(ctx, name); err != nil {
			p.log.Warn("shard upkeep failed", "shard", name, "err", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// staleCreating is how old a warm database still 'creating' must be before
// it counts as left by a server that died.
const staleCreating = 10 * time.Minute

func (p *Provisioner) maintainShard(ctx context.Context, shard string) error {
	sh, err := p.store.GetShard(ctx, shard)
	if err != nil || sh.State != silo.ShardActive {
		return err
	}
	// One upkeep per shard at a time, fleet-wide; a busy shard is skipped,
	// as its upkeep is under way.
	lock, err := p.catalog.Acquire(ctx)
	if err != nil {
		return silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable")
	}
	defer lock.Release()
	var mine bool
	if err := lock.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, hashtext('maintain:' || $2))`, lockClass, shard).Scan(&mine); err != nil {
		return silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable")
	}
	if !mine {
		return nil
	}
	defer func() {
		_, _ = lock.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1, hashtext('maintain:' || $2))`, lockClass, shard)
	}()
	version, err := p.templateVersion(ctx, shard)
	if err != nil {
		return err
	}
	sc, err := p.shard(ctx, shard)
	if err != nil {
		return err
	}
	warm, err := p.store.WarmDatabases(ctx, shard)
	if err != nil {
		return err
	}
	ready, claimable := 0, 0
	for _, w := range warm {
		stale := w.SchemaVersion != version || (!w.Ready && time.Since(w.CreatedAt) > staleCreating)
		if !stale {
			ready++ // or about to be: another upkeep run is making it
			if w.Ready {
				claimable++
			}
			continue
		}
		if err := p.dropDatabaseAndRole(ctx, sc, shard, w.Name); err != nil {
			return err
		}
		if err := p.store.RemoveWarmDatabase(ctx, shard, w.Name); err != nil {
			return err
		}
	}
	for ; ready < p.cfg.WarmPoolSize; ready++ {
		name := warmPrefix + strings.ToLower(rand.Text()[:16])
		// Recorded first: a crash mid-create leaves a row to clean up, not a
		// database nobody knows.
		if err := p.store.AddWarmDatabase(ctx, shard, name, version); err != nil {
			return err
		}
		if err := p.prepareWarm(ctx, sc, shard, name); err != nil {
			return err
		}
		if err := p.store.WarmDatabaseReady(ctx, shard, name); err != nil {
			return err
		}
		claimable++
	}
	p.metrics.warmPool.WithLabelValues(shard).Set(float64(claimable))
	return nil
}

// prepareWarm makes a warm unit: a NOLOGIN role and a clone of the template
// that it owns, with everything in it. Claiming it is then a rename of both
// and a password: no connection to the new database, no REASSIGN.
func (p *Provisioner) prepareWarm(ctx context.Context, sc *ShardAdmin, shard, name string) error {
	_, err := sc.pool.Exec(ctx, "CREATE ROLE "+ident(name)+" NOLOGIN")
	if err != nil && shardmap.SQLState(err) != "42710" {
		return shardmap.ShardError(err, shard)
	}
	if !sc.superuser {
		if _, err := sc.pool.Exec(ctx, "GRANT "+ident(name)+" TO CURRENT_USER"); err != nil {
			return shardmap.ShardError(err, shard)
		}
	}
	if err := p.cloneTemplate(ctx, sc, shard, name); err != nil {
		return err
	}
	return p.handOver(ctx, sc, shard, name, true)
}

// dropDatabaseAndRole removes a database and the role of the same name.
func (p *Provisioner) dropDatabaseAndRole(ctx context.Context, sc *ShardAdmin, shard, name string) error {
	if _, err := sc.pool.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)"); err != nil {
		return shardmap.ShardError(err, shard)
	}
	if _, err := sc.pool.Exec(ctx, "DROP ROLE IF EXISTS "+ident(name)); err != nil {
		return shardmap.ShardError(err, shard)
	}
	return nil
}

// lockClass is the first key of the advisory locks of the provisioner's
// upkeep: the catalog's per-shard maintenance lock and each shard's
// template lock. Apart from the engine's classes, so that a hash collision
// never makes an upkeep lock look like an operation's lease.
const lockClass = 0x51_10_11
