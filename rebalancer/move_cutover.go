package rebalancer

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/shardmap"
)

// pause starts a cutover: routers hold the tenant's requests (state
// moving), statements in flight on the source finish, and the role's
// sessions there end. It returns a session of Silo's own as the tenant on
// the source, opened in between, which is all that is left there: the
// role may no longer log in, so this session is how the cutover reads the
// source's rows and sequences as the tenant. The caller closes it.
func (m *move) pause(ctx context.Context) (*pgx.Conn, error) {
	t, err := m.r.store.GetTenant(ctx, m.id)
	if err != nil {
		return nil, err
	}
	if t.State != silo.TenantMoving {
		t.State = silo.TenantMoving
		if _, err = m.r.store.UpdateTenantTx(ctx, nil, *t); err != nil {
			return nil, err
		}
	}
	// Statements in flight finish; then the source takes no more.
	deadline := time.Now().Add(drainTimeout)
	for time.Now().Before(deadline) {
		var busy int
		if err := m.src.Pool().QueryRow(ctx, `
			SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = $1 AND state <> 'idle'`, m.name).Scan(&busy); err != nil {
			return nil, shardmap.ShardError(err, m.from)
		}
		if busy == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Then the role's sessions end, but one of Silo's own as the tenant.
	sconn, err := m.r.prov.SoleSession(ctx, m.tenant, m.from)
	if err != nil {
		return nil, err
	}
	// A large object made since the move began would be left behind.
	if err := largeObjects(ctx, sconn, m.id); err != nil {
		sconn.Close(context.WithoutCancel(ctx))
		return nil, shardmap.ShardError(err, m.from)
	}
	return sconn, nil
}

// phases records how far into the pause each part of a cutover ended,
// for the "tenant moved" log line.
type phases struct {
	start time.Time
	marks []any
}

func (p *phases) mark(name string) {
	p.marks = append(p.marks, name+"_ms", time.Since(p.start).Milliseconds())
}

// liveCutover switches a tenant from the source to the target: paused
// (see pause), the target applies the source's last writes (awaitFence),
// the subscription stops, the unlogged tables are copied, the replica
// identities the move changed are set back on both sides, and the cutover
// verifies and flips (verifyAndFlip).
func (m *move) liveCutover(ctx context.Context) error {
	ph := &phases{start: time.Now()}
	sconn, err := m.pause(ctx)
	if err != nil {
		return err
	}
	defer sconn.Close(context.WithoutCancel(ctx))
	ph.mark("sessions_ended")
	if err := m.awaitFence(ctx, catchUpTimeout); err != nil {
		return err
	}
	ph.mark("caught_up")
	// The subscription stops before any statement runs in a session of the
	// tenant's on the target: on 15 its apply is a superuser's, and code of
	// the tenant's (a cast, a policy) must find nothing there to plant a
	// trigger for; nor may it alter the subscription.
	if err := m.stopSubscription(ctx); err != nil {
		return err
	}
	ph.mark("stopped")
	dconn, err := m.r.dialer.ConnectTenant(ctx, m.tenant, m.to)
	if err != nil {
		return err
	}
	defer dconn.Close(context.WithoutCancel(ctx))
	// Logical replication carries no unlogged table: their rows are copied
	// now, paused.
	if err := copyData(ctx, sconn, dconn, "", unloggedTables, nil); err != nil {
		return silo.WrapError(err, silo.EINTERNAL, "copy tenant %q's unlogged tables to shard %q: %v", m.id, m.to, err)
	}
	ph.mark("unlogged")
	// Nothing is published any more: the tables' own identities are back,
	// on the source (as the undo would) and on the target.
	if err := setIdentities(ctx, sconn, m.identities, false); err != nil {
		return shardmap.ShardError(err, m.from)
	}
	if err := setIdentities(ctx, dconn, m.identities, false); err != nil {
		return shardmap.ShardError(err, m.to)
	}
	return m.verifyAndFlip(ctx, ph, sconn, dconn)
}

// awaitFence writes a value no cutover used before into the fence's row on
// the source and waits up to within until the target's row shows it. The
// subscription applies the source's transactions one at a time, in their
// commit order: once the fence's is applied, so is every write of the
// tenant's that committed before it (all of them, once it is paused).
//
// The slot's confirmed_flush_lsn is no such proof: a subscriber with no
// commit pending reports as flushed the last position it received, while
// its apply may still be on earlier transactions (a cutover that trusted
// it found 2,124 of 2,149 rows on the target under load, and was undone).
//
// Both sides are read and written as the admin: the fence is Silo's own
// table, on which the tenant can have no trigger, rule or policy.
func (m *move) awaitFence(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	token := uuid.NewString()
	defer m.r.metrics.catchUps.start()() // the lag gauge: how long the target has yet to show the fence
	err := m.onAdmin(ctx, m.from, func(c *pgx.Conn) error {
		tag, err := c.Exec(ctx, "UPDATE "+ident(fenceSchema)+".fence SET token = $1 WHERE id = 1", token)
		if err == nil && tag.RowsAffected() != 1 {
			err = silo.Errorf(silo.EINTERNAL, "the fence of tenant %q's move has no row on shard %q", m.id, m.from)
		}
		return err
	})
	if err != nil {
		return shardmap.ShardError(err, m.from)
	}
	err = m.onAdmin(ctx, m.to, func(c *pgx.Conn) error {
		// Polled often for a second (the paused cutover's wait is short),
		// then less (the initial copy's may be long).
		for start := time.Now(); ; {
			// An apply that fails (a tenant's DDL on the source, say) is
			// retried by PostgreSQL for ever: give up instead.
			var seen string
			var applyErrors int64
			if err := c.QueryRow(ctx, "SELECT (SELECT token FROM "+ident(fenceSchema)+".fence WHERE id = 1), "+
				"(SELECT coalesce(sum(apply_error_count), 0) FROM pg_catalog.pg_stat_subscription_stats WHERE subname = $1)",
				m.slot).Scan(&seen, &applyErrors); err != nil {
				return err
			}
			if seen == token {
				return nil
			}
			if applyErrors > 0 {
				return silo.Errorf(silo.EINTERNAL, "shard %q failed to apply tenant %q's changes (see the shard's log)", m.to, m.id)
			}
			if time.Now().After(deadline) {
				return silo.Errorf(silo.ETIMEOUT, "shard %q did not apply tenant %q's last writes within %s", m.to, m.id, within)
			}
			wait := 2 * time.Millisecond
			if time.Since(start) > time.Second {
				wait = 100 * time.Millisecond
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
	})
	return shardmap.ShardError(err, m.to)
}

// verifyAndFlip ends both cutovers, the tenant paused and its rows on the
// target: sequences follow, materialized views populated on the source are
// populated on the target, both sides are compared (compareReadOnly, the
// source in one read-only transaction), the tenant's triggers on the
// target are set back as they were, and the catalog points the tenant at
// the target (flip).
func (m *move) verifyAndFlip(ctx context.Context, ph *phases, sconn, dconn *pgx.Conn) error {
	if err := readOnly(ctx, sconn); err != nil {
		return shardmap.ShardError(err, m.from)
	}
	if err := copySequences(ctx, sconn, dconn); err != nil {
		return shardmap.ShardError(err, m.to)
	}
	ph.mark("sequences")
	n, err := refreshMatviews(ctx, sconn, dconn)
	if err != nil {
		return silo.WrapError(err, silo.EINTERNAL, "populate tenant %q's materialized views on shard %q: %v", m.id, m.to, err)
	}
	ph.marks = append(ph.marks, "matviews", n)
	ph.mark("refreshed")
	// Values become text alike on both sides for their checksums.
	if _, err := sconn.Exec(ctx, sameSettings); err != nil {
		return shardmap.ShardError(err, m.from)
	}
	if _, err := dconn.Exec(ctx, sameSettings); err != nil {
		return shardmap.ShardError(err, m.to)
	}
	if err := compareReadOnly(ctx, sconn, dconn); err != nil {
		return err
	}
	ph.mark("compared")
	if err := restoreTriggers(ctx, dconn, m.triggers); err != nil {
		return shardmap.ShardError(err, m.to)
	}
	ph.mark("triggers")
	return m.flip(ctx, ph, dconn)
}

// stopSubscription disables the move's subscription, found by its slot,
// and gives it to the admin: no change arrives once the tenant's triggers
// are back, and the tenant cannot alter it. The target has every change
// of the tenant's: the fence said so.
func (m *move) stopSubscription(ctx context.Context) error {
	return m.onAdmin(ctx, m.to, func(c *pgx.Conn) error {
		var sub string
		err := c.QueryRow(ctx, `SELECT subname FROM pg_catalog.pg_subscription WHERE subslotname = $1`, m.slot).Scan(&sub)
		if errors.Is(err, pgx.ErrNoRows) {
			return silo.Errorf(silo.EINTERNAL, "the subscription of tenant %q's move is gone from shard %q", m.id, m.to)
		}
		if err == nil {
			_, err = c.Exec(ctx, "ALTER SUBSCRIPTION "+ident(sub)+" DISABLE; ALTER SUBSCRIPTION "+ident(sub)+" OWNER TO CURRENT_USER")
		}
		return shardmap.ShardError(err, m.to)
	})
}

// flip points the catalog at the target (a new epoch, announced to every
// router, which releases the held requests there), the move's pivot
// (marked in the same transaction), and records the pause in the
// operation's parameters.
func (m *move) flip(ctx context.Context, ph *phases, dconn *pgx.Conn) error {
	t, err := m.r.store.GetTenant(ctx, m.id)
	if err != nil {
		return err
	}
	t.Shard, t.State = m.to, silo.TenantActive
	err = pgx.BeginFunc(ctx, m.r.catalog, func(tx pgx.Tx) error {
		if _, err := m.r.store.UpdateTenantTx(ctx, tx, *t); err != nil {
			return err
		}
		return engine.MarkPivot(ctx, tx)
	})
	if err != nil {
		return err
	}
	if err := m.r.eng.Failpoint(ctx, "move/after-flip"); err != nil {
		return err
	}
	pause := time.Since(ph.start)
	m.r.metrics.movePause.Observe(pause.Seconds())
	m.r.countMovedBytes(ctx, dconn)
	m.r.log.InfoContext(ctx, "tenant moved", append([]any{"tenant", m.id, "from", m.from, "to", m.to, "dump", m.dump, "pause_ms", pause.Milliseconds()}, ph.marks...)...)
	return m.setParams(ctx, map[string]any{"pauseMs": pause.Milliseconds()})
}

// dumpCutover moves a tenant without logical replication: paused (see
// pause), its rows are copied table by table, unlogged ones included,
// from Silo's session as the tenant on the source to one as the tenant on
// the target, in one transaction there; then it verifies and flips
// (verifyAndFlip). Its requests wait for up to the routers' hold and then
// fail with a retry hint: the pause lasts as long as the copy.
func (m *move) dumpCutover(ctx context.Context) error {
	ph := &phases{start: time.Now()}
	sconn, err := m.pause(ctx)
	if err != nil {
		return err
	}
	defer sconn.Close(context.WithoutCancel(ctx))
	ph.mark("sessions_ended")
	dconn, err := m.r.dialer.ConnectTenant(ctx, m.tenant, m.to)
	if err != nil {
		return err
	}
	defer dconn.Close(context.WithoutCancel(ctx))
	progress, flush := m.copyProgress(ctx)
	if err := copyData(ctx, sconn, dconn, "", allTables, progress); err != nil {
		return silo.WrapError(err, silo.EINTERNAL, "copy tenant %q's rows to shard %q: %v", m.id, m.to, err)
	}
	flush()
	ph.mark("copied")
	return m.verifyAndFlip(ctx, ph, sconn, dconn)
}
