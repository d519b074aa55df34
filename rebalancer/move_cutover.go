package rebalancer

import (
	"context"
	"errors"
	"time"

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
	return m.r.prov.SoleSession(ctx, m.tenant, m.from)
}

// liveCutover switches a tenant from the source to the target: paused
// (see pause), the target replays the source's last write, sequences
// follow, rows are compared, the subscription stops and the tenant's
// triggers on the target are set back as they were, and the catalog
// points the tenant at the target (a new epoch, announced to every
// router), which releases the held requests there. It records the write
// pause in the operation's parameters.
func (m *move) liveCutover(ctx context.Context) error {
	start := time.Now()
	phases := []any{}
	mark := func(name string) { phases = append(phases, name+"_ms", time.Since(start).Milliseconds()) }
	sconn, err := m.pause(ctx)
	if err != nil {
		return err
	}
	defer sconn.Close(context.WithoutCancel(ctx))
	mark("sessions_ended")
	var lsn string
	if err := m.src.Pool().QueryRow(ctx, `SELECT pg_catalog.pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		return shardmap.ShardError(err, m.from)
	}
	caught := time.Now().Add(catchUpTimeout)
	for {
		var done bool
		if err := m.src.Pool().QueryRow(ctx, `
			SELECT coalesce(confirmed_flush_lsn >= $2::pg_catalog.pg_lsn, false) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`,
			m.slot, lsn).Scan(&done); err != nil {
			return shardmap.ShardError(err, m.from)
		}
		if done {
			break
		}
		if time.Now().After(caught) {
			return silo.Errorf(silo.ETIMEOUT, "shard %q did not replay tenant %q's last writes within %s", m.to, m.id, catchUpTimeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
	mark("caught_up")
	// The subscription stops before any statement runs in a session of the
	// tenant's on the target: on 15 its apply is a superuser's, and code of
	// the tenant's (a cast, a policy) must find nothing there to plant a
	// trigger for; nor may it alter the subscription.
	if err := m.stopSubscription(ctx); err != nil {
		return err
	}
	mark("stopped")
	dconn, err := m.r.dialer.ConnectTenant(ctx, m.tenant, m.to)
	if err != nil {
		return err
	}
	defer dconn.Close(context.WithoutCancel(ctx))
	if err := readOnly(ctx, sconn); err != nil {
		return shardmap.ShardError(err, m.from)
	}
	if err := copySequences(ctx, sconn, dconn); err != nil {
		return err
	}
	mark("sequences")
	// The target committed what the source saw confirmed; its last
	// commits may take a moment more to show. The counts must meet before
	// the deadline, or the move is undone.
	for {
		err := compareReadOnly(ctx, sconn, dconn)
		if err == nil {
			break
		}
		if time.Now().After(caught) || silo.ErrorCode(err) != silo.EINTERNAL {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
	mark("counted")
	if err := restoreTriggers(ctx, dconn, m.triggers); err != nil {
		return shardmap.ShardError(err, m.to)
	}
	mark("triggers")
	return m.flip(ctx, start, dconn, phases)
}

// stopSubscription disables the move's subscription, found by its slot,
// and gives it to the admin: no change arrives once the tenant's triggers
// are back, and the tenant cannot alter it. The target has every change
// the cutover waited for: the subscription committed them before the
// source saw them confirmed.
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

// flip points the catalog at the target, the move's pivot (marked in the
// same transaction), and records the pause.
func (m *move) flip(ctx context.Context, start time.Time, dconn *pgx.Conn, phases []any) error {
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
	pause := time.Since(start)
	m.r.metrics.movePause.Observe(pause.Seconds())
	m.r.countMovedBytes(ctx, dconn)
	m.r.log.Info("tenant moved", append([]any{"tenant", m.id, "from", m.from, "to", m.to, "dump", m.dump, "pause_ms", pause.Milliseconds()}, phases...)...)
	return m.setParams(ctx, map[string]any{"pauseMs": pause.Milliseconds()})
}

// dumpCutover moves a tenant without logical replication: paused (see
// pause), its rows are copied table by table from Silo's session as the
// tenant on the source to one as the tenant on the target, in one
// transaction there, then compared, and the catalog flips it. Its requests
// wait for up to the routers' hold and then fail with a retry hint: the
// pause lasts as long as the copy.
func (m *move) dumpCutover(ctx context.Context) error {
	start := time.Now()
	sconn, err := m.pause(ctx)
	if err != nil {
		return err
	}
	defer sconn.Close(context.WithoutCancel(ctx))
	dconn, err := m.r.dialer.ConnectTenant(ctx, m.tenant, m.to)
	if err != nil {
		return err
	}
	defer dconn.Close(context.WithoutCancel(ctx))
	if err := copyData(ctx, sconn, dconn, ""); err != nil {
		return silo.WrapError(err, silo.EINTERNAL, "copy tenant %q's rows to shard %q: %v", m.id, m.to, err)
	}
	if err := readOnly(ctx, sconn); err != nil {
		return shardmap.ShardError(err, m.from)
	}
	if err := copySequences(ctx, sconn, dconn); err != nil {
		return err
	}
	if err := compareReadOnly(ctx, sconn, dconn); err != nil {
		return err
	}
	if err := restoreTriggers(ctx, dconn, m.triggers); err != nil {
		return shardmap.ShardError(err, m.to)
	}
	return m.flip(ctx, start, dconn, nil)
}
