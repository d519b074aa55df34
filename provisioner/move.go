package provisioner

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/shardmap"
)

// Bounds of a move's phases.
const (
	// moveCopyTimeout bounds the initial copy of the tenant's tables.
	moveCopyTimeout = time.Hour
	// drainTimeout is how long the cutover waits for statements in flight
	// on the source before it ends the tenant's sessions there.
	drainTimeout = 2 * time.Second
	// catchUpTimeout bounds the wait for the target to replay the source's
	// last writes during the cutover.
	catchUpTimeout = 10 * time.Second
	// DefaultRetireAfter is how long a moved tenant's old database is kept.
	DefaultRetireAfter = 24 * time.Hour
)

// MoveRequest asks for a tenant to move to another shard.
type MoveRequest struct {
	ID    string
	Shard string // the target
}

// Move moves an active tenant to another shard of its region, live: its
// database is copied by logical replication while it serves, then a
// cutover of about a second (requests held by the routers) switches it.
// It refuses (ECONFLICT) a move to the tenant's own shard, to a shard not
// active, to another region, or of a tenant not active; ENOTFOUND for
// unknown shards and tenants.
func (p *Provisioner) Move(ctx context.Context, req MoveRequest, wait time.Duration) (Result, error) {
	t, err := p.store.GetTenant(ctx, req.ID)
	if err != nil {
		return Result{}, err
	}
	switch t.State {
	case silo.TenantActive:
	case silo.TenantPurged, silo.TenantDeleted:
		return Result{}, silo.Errorf(silo.ENOTFOUND, "tenant %q not found", req.ID)
	default:
		return Result{}, silo.Errorf(silo.ECONFLICT, "tenant %q is %s; only an active tenant can move", req.ID, t.State)
	}
	if err := silo.ValidateShardName(req.Shard); err != nil {
		return Result{}, err
	}
	target, err := p.store.GetShard(ctx, req.Shard)
	if err != nil {
		return Result{}, err
	}
	switch {
	case target.Name == t.Shard:
		return Result{}, silo.Errorf(silo.ECONFLICT, "tenant %q is on shard %q already", req.ID, t.Shard)
	case target.State != silo.ShardActive:
		return Result{}, silo.Errorf(silo.ECONFLICT, "shard %q is %s: tenants move only to active shards", target.Name, target.State)
	case target.Region != t.Region:
		return Result{}, silo.Errorf(silo.ECONFLICT, "tenant %q is pinned to region %q; shard %q is in %q", req.ID, t.Region, target.Name, target.Region)
	}
	opID := newUUID()
	params := map[string]any{"operation": opID, "from": t.Shard, "to": target.Name}
	err = p.store.Mutate(ctx, "tenant.move", "tenant/"+req.ID, params, func(tx pgx.Tx) error {
		return p.insertOperation(ctx, tx, shardmap.NewOperation{ID: opID, Kind: silo.OpMove, TenantID: req.ID, Params: params})
	})
	if err != nil {
		return Result{}, err
	}
	return p.await(ctx, opID, p.launch(ctx, opID), wait)
}

// movePlan copies the tenant's database to the target shard with logical
// replication, cuts over, and retires the source. Any failure before the
// tenant's row points at the target undoes everything on the target and
// leaves the tenant working on the source.
func (p *Provisioner) movePlan(op *silo.Operation, params map[string]any) (plan, error) {
	id, name := op.TenantID, silo.DatabaseName(op.TenantID)
	from, _ := params["from"].(string)
	to, _ := params["to"].(string)
	if from == "" || to == "" {
		return plan{}, silo.Errorf(silo.EINTERNAL, "move operation %s has no shards", op.ID)
	}
	slot := "silo_move_" + name // one move per tenant at a time; unique on the source
	pub := "silo_move"
	// targetMade says this move made (or was about to make) the tenant's
	// database on the target: only then may its undo drop one there.
	targetMade, _ := params["targetMade"].(bool)
	// dump: the source has no logical replication, so the tenant is paused
	// and its data dumped and restored instead.
	dump, _ := params["dump"].(bool)
	var src, dst *shardConn
	load := func(ctx context.Context) error {
		var err error
		if src == nil {
			if src, err = p.shard(ctx, from); err != nil {
				return err
			}
		}
		if dst == nil {
			dst, err = p.shard(ctx, to)
		}
		return err
	}
	flipped := func(ctx context.Context) (bool, error) {
		t, err := p.store.GetTenant(ctx, id)
		if err != nil {
			return false, err
		}
		return t.Shard == to, nil
	}
	forward := []step{
		{name: "check-source", run: func(ctx context.Context) error {
			if err := load(ctx); err != nil {
				return err
			}
			var level string
			if err := src.pool.QueryRow(ctx, `SHOW wal_level`).Scan(&level); err != nil {
				return shardError(err, from)
			}
			if level != "logical" && !dump {
				p.log.Warn("shard has no logical replication: the tenant is moved by dump and restore, paused meanwhile",
					"shard", from, "wal_level", level, "tenant", id)
				if err := p.store.SetOperationParams(ctx, nil, op.ID, map[string]any{"dump": true}); err != nil {
					return err
				}
				dump = true
			}
			return p.awaitMigration(ctx, id)
		}},
		{name: "target-database", run: func(ctx context.Context) error {
			if done, err := flipped(ctx); done || err != nil {
				return err
			}
			if err := load(ctx); err != nil {
				return err
			}
			var exists, hasRole bool
			if err := dst.pool.QueryRow(ctx, `
				SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1),
				       EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, name).Scan(&exists, &hasRole); err != nil {
				return shardError(err, to)
			}
			if (exists || hasRole) && !targetMade {
				return silo.Errorf(silo.ECONFLICT, "shard %q already has a database or role %s that this move did not make", to, name)
			}
			// Recorded first: a crash before the database is made leaves a
			// flag and nothing to drop, never a database the undo would not
			// drop.
			if !targetMade {
				if err := p.store.SetOperationParams(ctx, nil, op.ID, map[string]any{"targetMade": true}); err != nil {
					return err
				}
				targetMade = true
			}
			if _, err := p.ensureRole(ctx, dst, to, id, name, ""); err != nil {
				return err
			}
			if !exists {
				// template0: the tenant's schema comes from its source, whole.
				if _, err := dst.pool.Exec(ctx, "CREATE DATABASE "+ident(name)+" TEMPLATE template0"); err != nil && sqlState(err) != "42P04" {
					return shardError(err, to)
				}
			}
			return p.handOver(ctx, dst, to, name, false)
		}},
		{name: "copy-schema", run: func(ctx context.Context) error {
			if done, err := flipped(ctx); done || err != nil {
				return err
			}
			if err := load(ctx); err != nil {
				return err
			}
			var tables int
			err := p.onDatabase(ctx, dst, to, name, func(c *pgx.Conn) error {
				return c.QueryRow(ctx, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
					WHERE c.relkind IN ('r', 'p') AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'`).Scan(&tables)
			})
			if err != nil || tables > 0 {
				return err // copied by an earlier attempt
			}
			schema, err := p.dumpSchema(ctx, src, from, name)
			if err != nil {
				return err
			}
			return p.onDatabase(ctx, dst, to, name, func(c *pgx.Conn) error {
				// As the tenant's role, so that it owns what it gets.
				_, err := c.Exec(ctx, "SET ROLE "+ident(name)+";\n"+schema+"\nRESET ROLE;")
				if err != nil {
					return silo.WrapError(err, silo.EINTERNAL, "copy the schema of tenant %q to shard %q: %v", id, to, err)
				}
				return nil
			})
		}},
		{name: "replicate", run: func(ctx context.Context) error {
			if done, err := flipped(ctx); done || err != nil || dump {
				return err
			}
			if err := load(ctx); err != nil {
				return err
			}
			if err := p.onDatabase(ctx, src, from, name, func(c *pgx.Conn) error {
				_, err := c.Exec(ctx, "CREATE PUBLICATION "+ident(pub)+" FOR ALL TABLES")
				if sqlState(err) == "42710" { // duplicate_object: an earlier attempt made it
					return nil
				}
				return shardError(err, from)
			}); err != nil {
				return err
			}
			conninfo, err := p.conninfo(src, from, name)
			if err != nil {
				return err
			}
			return p.onDatabase(ctx, dst, to, name, func(c *pgx.Conn) error {
				_, err := c.Exec(ctx, "CREATE SUBSCRIPTION "+ident(slot)+" CONNECTION "+quoteLiteral(conninfo)+
					" PUBLICATION "+ident(pub)+" WITH (slot_name = "+quoteLiteral(slot)+
					// Commits on the target flush at once, so its reports to
					// the source (what the cutover waits for) do not lag the
					// WAL writer.
					", synchronous_commit = 'on')")
				if sqlState(err) == "42710" {
					return nil
				}
				return shardError(err, to)
			})
		}},
		{name: "initial-copy", run: func(ctx context.Context) error {
			if done, err := flipped(ctx); done || err != nil || dump {
				return err
			}
			if err := load(ctx); err != nil {
				return err
			}
			return p.onDatabase(ctx, dst, to, name, func(c *pgx.Conn) error {
				for {
					var pending int
					if err := c.QueryRow(ctx, `
						SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
						WHERE s.subname = $1 AND r.srsubstate NOT IN ('r', 's')`, slot).Scan(&pending); err != nil {
						return shardError(err, to)
					}
					if pending == 0 {
						return nil
					}
					// A table whose copy fails is retried by PostgreSQL for
					// ever: give up instead, and undo.
					var syncErrors int64
					if err := c.QueryRow(ctx, `
						SELECT coalesce(sum(sync_error_count), 0) FROM pg_stat_subscription_stats WHERE subname = $1`,
						slot).Scan(&syncErrors); err != nil {
						return shardError(err, to)
					}
					if syncErrors > 0 {
						return silo.Errorf(silo.EINTERNAL, "the copy of tenant %q's tables to shard %q failed (see the shard's log)", id, to)
					}
					select {
					case <-ctx.Done():
						return silo.WrapError(ctx.Err(), silo.ETIMEOUT, "the copy of tenant %q to shard %q did not finish in time", id, to)
					case <-time.After(100 * time.Millisecond):
					}
				}
			})
		}},
		{name: "cutover", run: func(ctx context.Context) error {
			if done, err := flipped(ctx); done || err != nil {
				return err
			}
			if err := load(ctx); err != nil {
				return err
			}
			if dump {
				return p.dumpCutover(ctx, op, src, dst, from, to, name)
			}
			return p.cutover(ctx, op, src, dst, from, to, name, slot)
		}},
		{name: "cleanup", run: func(ctx context.Context) error {
			if err := load(ctx); err != nil {
				return err
			}
			return p.moveCleanup(ctx, src, dst, from, to, id, name, slot, pub, true)
		}},
	}
	undo := []step{
		{name: "undo:replication", run: func(ctx context.Context) error {
			if err := load(ctx); err != nil {
				return err
			}
			return p.moveCleanup(ctx, src, dst, from, to, id, name, slot, pub, false)
		}},
		{name: "undo:target-database", run: func(ctx context.Context) error {
			if !targetMade {
				return nil // not ours to drop
			}
			if err := load(ctx); err != nil {
				return err
			}
			return p.dropDatabaseAndRole(ctx, dst, to, name)
		}},
		{name: "undo:source", run: func(ctx context.Context) error {
			if err := load(ctx); err != nil {
				return err
			}
			t, err := p.store.GetTenant(ctx, id)
			if err != nil {
				return err
			}
			if err := p.setLogin(ctx, src, from, name, true); err != nil {
				return err
			}
			if t.State == silo.TenantMoving {
				t.State = silo.TenantActive
				_, err = p.store.UpdateTenantTx(ctx, nil, *t)
			}
			return err
		}},
	}
	return plan{forward: forward, undo: undo, finishUndo: true}, nil
}

// awaitMigration waits until no migration run is migrating the tenant: the
// runner holds migrations.TenantLockClass on it while it does, and starts
// none while an operation (this move) runs on the tenant.
func (p *Provisioner) awaitMigration(ctx context.Context, id string) error {
	conn, err := p.catalog.Acquire(ctx)
	if err != nil {
		return silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable")
	}
	defer conn.Release()
	for {
		var free bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, hashtext($2))`, migrations.TenantLockClass, id).Scan(&free); err != nil {
			return silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable")
		}
		if free {
			_, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1, hashtext($2))`, migrations.TenantLockClass, id)
			return err
		}
		select {
		case <-ctx.Done():
			return silo.WrapError(ctx.Err(), silo.ETIMEOUT, "tenant %q is being migrated; the move gave up waiting", id)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// cutover switches a tenant from src to dst: routers hold its requests
// (state moving), statements in flight on the source finish, its sessions
// there end and its role may no longer log in, the target replays the
// source's last write, sequences follow, row counts are compared, and the
// catalog points the tenant at the target (a new epoch, announced to every
// router), which releases the held requests there. It records the write
// pause in the operation's parameters.
func (p *Provisioner) cutover(ctx context.Context, op *silo.Operation, src, dst *shardConn, from, to, name, slot string) error {
	t, err := p.store.GetTenant(ctx, op.TenantID)
	if err != nil {
		return err
	}
	start := time.Now()
	phases := []any{}
	mark := func(name string) { phases = append(phases, name+"_ms", time.Since(start).Milliseconds()) }
	t.State = silo.TenantMoving
	if t, err = p.store.UpdateTenantTx(ctx, nil, *t); err != nil {
		return err
	}
	// Statements in flight finish; then the source takes no more.
	deadline := time.Now().Add(drainTimeout)
	for time.Now().Before(deadline) {
		var busy int
		if err := src.pool.QueryRow(ctx, `
			SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state NOT IN ('idle')`, name).Scan(&busy); err != nil {
			return shardError(err, from)
		}
		if busy == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	mark("drained")
	if err := p.setLogin(ctx, src, from, name, false); err != nil {
		return err
	}
	// pg_terminate_backend only asks: wait until the sessions are gone, so
	// that no write of theirs can commit after the LSN read below.
	for gone := false; !gone; {
		var left int
		if err := src.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE usename = $1`, name).Scan(&left); err != nil {
			return shardError(err, from)
		}
		if gone = left == 0; !gone {
			if ctx.Err() != nil {
				return shardError(ctx.Err(), from)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	mark("sessions_ended")
	var lsn string
	if err := src.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		return shardError(err, from)
	}
	caught := time.Now().Add(catchUpTimeout)
	for {
		var done bool
		if err := src.pool.QueryRow(ctx, `
			SELECT coalesce(confirmed_flush_lsn >= $2::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = $1`,
			slot, lsn).Scan(&done); err != nil {
			return shardError(err, from)
		}
		if done {
			break
		}
		if time.Now().After(caught) {
			return silo.Errorf(silo.ETIMEOUT, "shard %q did not replay tenant %q's last writes within %s", to, op.TenantID, catchUpTimeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
	mark("caught_up")
	sconn, err := p.connectDB(ctx, src, from, name)
	if err != nil {
		return err
	}
	defer sconn.Close(context.WithoutCancel(ctx))
	dconn, err := p.connectDB(ctx, dst, to, name)
	if err != nil {
		return err
	}
	defer dconn.Close(context.WithoutCancel(ctx))
	if err := copySequences(ctx, sconn, dconn); err != nil {
		return err
	}
	mark("sequences")
	// The slot's position says what the target received; its last commits
	// may take a moment more to show. The counts must meet before the
	// deadline, or the move is undone.
	for {
		err := compareCounts(ctx, sconn, dconn)
		if err == nil {
			break
		}
		if time.Now().After(caught) || silo.ErrorCode(err) != silo.EINTERNAL {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
	mark("counted")
	t.Shard, t.State = to, silo.TenantActive
	if _, err := p.store.UpdateTenantTx(ctx, nil, *t); err != nil {
		return err
	}
	pause := time.Since(start)
	p.metrics.movePause.Observe(pause.Seconds())
	p.countMovedBytes(ctx, dconn)
	p.log.Info("tenant moved", append([]any{"tenant", op.TenantID, "from", from, "to", to, "pause_ms", pause.Milliseconds()}, phases...)...)
	return p.store.SetOperationParams(ctx, nil, op.ID, map[string]any{"pauseMs": pause.Milliseconds()})
}

// dumpCutover moves a tenant whose source has no logical replication: it
// is paused (state moving, its role may not log in, its sessions ended),
// its data is dumped from the source and restored on the target (whose
// schema the copy-schema step made), row counts are compared, and the
// catalog flips it. Its requests wait for up to the routers' hold and then
// fail with a retry hint: the pause lasts as long as the copy.
func (p *Provisioner) dumpCutover(ctx context.Context, op *silo.Operation, src, dst *shardConn, from, to, name string) error {
	t, err := p.store.GetTenant(ctx, op.TenantID)
	if err != nil {
		return err
	}
	start := time.Now()
	t.State = silo.TenantMoving
	if t, err = p.store.UpdateTenantTx(ctx, nil, *t); err != nil {
		return err
	}
	if err := p.setLogin(ctx, src, from, name, false); err != nil {
		return err
	}
	dconn, err := p.connectDB(ctx, dst, to, name)
	if err != nil {
		return err
	}
	defer dconn.Close(context.WithoutCancel(ctx))
	// A retried step starts over: the target's tables are emptied first.
	if _, err := dconn.Exec(ctx, `
		DO $$ DECLARE r record; BEGIN
			FOR r IN SELECT format('%I.%I', n.nspname, c.relname) AS t FROM pg_class c
				JOIN pg_namespace n ON n.oid = c.relnamespace
				WHERE c.relkind IN ('r', 'p') AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
			LOOP EXECUTE 'TRUNCATE ' || r.t || ' CASCADE'; END LOOP;
		END $$`); err != nil {
		return shardError(err, to)
	}
	// Passwords go in the environment, never on a command line.
	srcInfo, srcPassword, err := p.clientConninfo(src, from, name)
	if err != nil {
		return err
	}
	dstInfo, dstPassword, err := p.clientConninfo(dst, to, name)
	if err != nil {
		return err
	}
	restore := filepath.Join(filepath.Dir(p.cfg.PgDump), "pg_restore")
	if p.cfg.PgDump == "pg_dump" {
		restore = "pg_restore"
	}
	dumpCmd := exec.CommandContext(ctx, p.cfg.PgDump, "--data-only", "--format=custom", "--dbname="+srcInfo)
	restoreCmd := exec.CommandContext(ctx, restore, "--data-only", "--disable-triggers", "--single-transaction", "--dbname="+dstInfo)
	dumpCmd.Env = []string{"PATH=/usr/bin:/bin", "PGPASSWORD=" + srcPassword}
	restoreCmd.Env = []string{"PATH=/usr/bin:/bin", "PGPASSWORD=" + dstPassword}
	pipe, err := dumpCmd.StdoutPipe()
	if err != nil {
		return err
	}
	restoreCmd.Stdin = pipe
	var dumpErr, restoreErr bytes.Buffer
	dumpCmd.Stderr, restoreCmd.Stderr = &dumpErr, &restoreErr
	if err := dumpCmd.Start(); err != nil {
		return silo.WrapError(err, silo.EINTERNAL, "start pg_dump: %v", err)
	}
	rerr := restoreCmd.Run()
	derr := dumpCmd.Wait()
	if derr != nil || rerr != nil {
		return silo.Errorf(silo.EUNAVAILABLE, "dump and restore of tenant %q failed: %s %s", op.TenantID,
			strings.Join(strings.Fields(dumpErr.String()), " "), strings.Join(strings.Fields(restoreErr.String()), " "))
	}
	sconn, err := p.connectDB(ctx, src, from, name)
	if err != nil {
		return err
	}
	defer sconn.Close(context.WithoutCancel(ctx))
	if err := compareCounts(ctx, sconn, dconn); err != nil {
		return err
	}
	t.Shard, t.State = to, silo.TenantActive
	if _, err := p.store.UpdateTenantTx(ctx, nil, *t); err != nil {
		return err
	}
	pause := time.Since(start)
	p.metrics.movePause.Observe(pause.Seconds())
	p.countMovedBytes(ctx, dconn)
	p.log.Info("tenant moved by dump and restore", "tenant", op.TenantID, "from", from, "to", to, "pause_ms", pause.Milliseconds())
	return nil
}

// countMovedBytes adds the moved database's size on the target to the
// bytes-moved metric.
func (p *Provisioner) countMovedBytes(ctx context.Context, dst *pgx.Conn) {
	var size int64
	if err := dst.QueryRow(ctx, `SELECT pg_database_size(current_database())`).Scan(&size); err == nil {
		p.metrics.moveBytes.Add(float64(size))
	}
}

// copySequences sets every sequence of the target to the source's value:
// logical replication carries rows, not sequences.
func copySequences(ctx context.Context, src, dst *pgx.Conn) error {
	rows, err := src.Query(ctx, `
		SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences
		WHERE last_value IS NOT NULL`)
	if err != nil {
		return err
	}
	type seq struct {
		name  string
		value int64
	}
	seqs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (seq, error) {
		var s seq
		return s, r.Scan(&s.name, &s.value)
	})
	if err != nil {
		return err
	}
	for _, s := range seqs {
		if _, err := dst.Exec(ctx, `SELECT setval($1::regclass, $2, true)`, s.name, s.value); err != nil {
			return fmt.Errorf("set sequence %s on the target: %w", s.name, err)
		}
	}
	return nil
}

// compareCounts refuses a cutover when any table has another number of rows
// on the target than on the source. Both sides count at once.
func compareCounts(ctx context.Context, src, dst *pgx.Conn) error {
	rows, err := src.Query(ctx, `
		SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
		ORDER BY 1`)
	if err != nil {
		return err
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	count := func(conn *pgx.Conn) ([]int64, error) {
		out := make([]int64, len(tables))
		for i, table := range tables {
			// Names quoted by format(%I) above.
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&out[i]); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	var theirs []int64
	var theirErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		theirs, theirErr = count(dst)
	}()
	ours, err := count(src)
	<-done
	if err != nil {
		return err
	}
	if theirErr != nil {
		return theirErr
	}
	for i, table := range tables {
		if ours[i] != theirs[i] {
			return silo.Errorf(silo.EINTERNAL, "table %s has %d rows on the source and %d on the target: the move is undone", table, ours[i], theirs[i])
		}
	}
	// Where it is cheap, the rows themselves: a checksum of each small
	// table, in a stable order.
	for i, table := range tables {
		if ours[i] > checksumRows {
			continue
		}
		q := "SELECT coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM " + table + " t"
		var a, b string
		if err := src.QueryRow(ctx, q).Scan(&a); err != nil {
			return err
		}
		if err := dst.QueryRow(ctx, q).Scan(&b); err != nil {
			return err
		}
		if a != b {
			return silo.Errorf(silo.EINTERNAL, "table %s has other rows on the target than on the source: the move is undone", table)
		}
	}
	return nil
}

// checksumRows is the most rows a table may have for the cutover to
// compare a checksum of its rows, not only their count.
const checksumRows = 10000

// moveCleanup removes the replication of a move. After a cutover (retire),
// the source database and role are renamed and kept for a grace period;
// otherwise (undo) the source is left as it is.
func (p *Provisioner) moveCleanup(ctx context.Context, src, dst *shardConn, from, to, id, name, slot, pub string, retire bool) error {
	// The subscription first: dropping it drops its slot on the source.
	err := p.onDatabase(ctx, dst, to, name, func(c *pgx.Conn) error {
		var exists bool
		if err := c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)`, slot).Scan(&exists); err != nil || !exists {
			return err
		}
		if _, err := c.Exec(ctx, "ALTER SUBSCRIPTION "+ident(slot)+" DISABLE"); err != nil {
			return err
		}
		_, err := c.Exec(ctx, "DROP SUBSCRIPTION "+ident(slot))
		if err != nil {
			// The source cannot be reached: forget the slot here and drop
			// it there below.
			if _, err := c.Exec(ctx, "ALTER SUBSCRIPTION "+ident(slot)+" SET (slot_name = NONE)"); err != nil {
				return err
			}
			_, err = c.Exec(ctx, "DROP SUBSCRIPTION "+ident(slot))
		}
		return err
	})
	if err != nil && sqlState(err) != "3D000" { // the target database is gone already
		return shardError(err, to)
	}
	if _, err := src.pool.Exec(ctx, `
		SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, slot); err != nil {
		return shardError(err, from)
	}
	err = p.onDatabase(ctx, src, from, name, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, "DROP PUBLICATION IF EXISTS "+ident(pub))
		return err
	})
	if err != nil && sqlState(err) != "3D000" {
		return shardError(err, from)
	}
	if !retire {
		return nil
	}
	retired := "silo_moved_" + strings.ToLower(newUUID()[:8]) + "_" + name
	if len(retired) > 63 {
		retired = retired[:63]
	}
	var exists bool
	if err := src.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return shardError(err, from)
	}
	if !exists {
		return nil // retired by an earlier attempt
	}
	if err := p.store.RetireDatabase(ctx, from, retired, id, time.Now().Add(p.cfg.RetireAfter)); err != nil {
		return err
	}
	for _, stmt := range []string{
		"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = " + quoteLiteral(name),
		"ALTER DATABASE " + ident(name) + " RENAME TO " + ident(retired),
		"ALTER ROLE " + ident(name) + " RENAME TO " + ident(retired),
	} {
		if _, err := src.pool.Exec(ctx, stmt); err != nil {
			return shardError(err, from)
		}
	}
	return nil
}

// onDatabase runs f on a connection to database db of a shard, as admin.
func (p *Provisioner) onDatabase(ctx context.Context, sc *shardConn, shard, db string, f func(*pgx.Conn) error) error {
	conn, err := p.connectDB(ctx, sc, shard, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return f(conn)
}

// conninfo is how the target's subscription reaches the tenant's database
// on the source: as the source's admin (replication needs it), password
// included, as a subscription keeps it.
func (p *Provisioner) conninfo(sc *shardConn, shard, db string) (string, error) {
	s, password, err := p.clientConninfo(sc, shard, db)
	if err != nil {
		return "", err
	}
	return s + " password=" + quoteConninfo(password), nil
}

// clientConninfo is how pg_dump and pg_restore reach database db on a
// shard as its admin, with the password apart (for PGPASSWORD: never on a
// command line).
func (p *Provisioner) clientConninfo(sc *shardConn, shard, db string) (string, string, error) {
	cfg, err := pgx.ParseConfig(sc.dsn)
	if err != nil {
		return "", "", silo.Errorf(silo.EINTERNAL, "shard %q has an invalid DSN", shard)
	}
	s := fmt.Sprintf("host=%s port=%d user=%s dbname=%s connect_timeout=%d",
		quoteConninfo(cfg.Host), cfg.Port, quoteConninfo(cfg.User), quoteConninfo(db), max(1, int(p.cfg.ConnectTimeout.Seconds())))
	if cfg.TLSConfig == nil {
		s += " sslmode=disable"
	}
	return s, cfg.Password, nil
}

// dumpSchema returns the tenant database's schema as SQL from pg_dump,
// without owners, privileges, publications or psql's meta-commands.
func (p *Provisioner) dumpSchema(ctx context.Context, sc *shardConn, shard, db string) (string, error) {
	conninfo, password, err := p.clientConninfo(sc, shard, db)
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, p.cfg.PgDump, "--schema-only", "--no-owner", "--no-privileges",
		"--no-publications", "--no-subscriptions", "--dbname="+conninfo)
	cmd.Env = []string{"PGPASSWORD=" + password, "PATH=/usr/bin:/bin"}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return "", silo.Errorf(silo.EINTERNAL, "pg_dump was not found (%s): install the PostgreSQL client", p.cfg.PgDump)
		}
		return "", silo.WrapError(err, silo.EUNAVAILABLE, "dump the schema of %s on shard %q: %s", db, shard,
			strings.Join(strings.Fields(stderr.String()), " "))
	}
	var b strings.Builder
	sc2 := bufio.NewScanner(&out)
	sc2.Buffer(make([]byte, 1<<20), 64<<20)
	for sc2.Scan() {
		line := sc2.Text()
		if strings.HasPrefix(line, `\`) {
			continue // psql meta-commands (\restrict), not SQL
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String(), sc2.Err()
}
