package rebalancer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/provisioner"
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
	// last writes during the cutover (its fence).
	catchUpTimeout = 10 * time.Second
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
// active, to another region, of a tenant not active, or of one whose
// database holds what no move carries (large objects, naming them) or a
// schema named as the move's fence; ENOTFOUND for unknown shards and
// tenants; EUNAVAILABLE when this Rebalancer has no Engine, or the
// tenant's shard cannot be reached. It waits up to wait for the move,
// which goes on in the background after that (Result.Operation says
// whether it is done); a failed move is returned with its error. ctx
// bounds the wait.
func (r *Rebalancer) Move(ctx context.Context, req MoveRequest, wait time.Duration) (Result, error) {
	if r.eng == nil {
		return Result{}, silo.Errorf(silo.EUNAVAILABLE, "this server does not move tenants")
	}
	t, err := r.store.GetTenant(ctx, req.ID)
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
	target, err := r.store.GetShard(ctx, req.Shard)
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
	// Refused before anything is made: the move's first step checks again.
	if err := r.carriable(ctx, t, t.Shard); err != nil {
		return Result{}, err
	}
	opID := uuid.NewString()
	params := map[string]any{"operation": opID, "from": t.Shard, "to": target.Name}
	err = r.store.Mutate(ctx, "tenant.move", "tenant/"+req.ID, params, func(tx pgx.Tx) error {
		return r.eng.Insert(ctx, tx, shardmap.NewOperation{ID: opID, Kind: silo.OpMove, TenantID: req.ID, Params: params})
	})
	if err != nil {
		return Result{}, err
	}
	return r.prov.Run(ctx, opID, wait)
}

// Result is what Move returns: its operation, finished or not, and the
// tenant as it stood when Move returned.
type Result = provisioner.Result

// carriable refuses (ECONFLICT) a move of a tenant whose database on shard
// holds large objects, which no move carries, or a schema named as the
// move's fence. It reads pg_catalog as the admin.
func (r *Rebalancer) carriable(ctx context.Context, t *silo.Tenant, shard string) error {
	if err := silo.ValidateDatabaseName(t.Database); err != nil {
		return err
	}
	conn, err := r.dialer.ConnectAdmin(ctx, shard, t.Database)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := largeObjects(ctx, conn, t.ID); err != nil {
		return shardmap.ShardError(err, shard)
	}
	return shardmap.ShardError(fenceNameFree(ctx, conn, t.ID), shard)
}

// move is one move's plan: its inputs, what its steps learn, and the steps
// themselves as methods. Its parameters are read from the operation when
// it is planned (again, on a resumed run).
type move struct {
	r          *Rebalancer
	op         *silo.Operation
	id         string
	from, to   string
	slot, pub  string
	targetMade bool // this move made (or was about to make) the target's database
	dump       bool // the data goes by a copy while the tenant is paused, not by replication
	triggers   []triggerState
	identities []identityState // the tables given REPLICA IDENTITY FULL on the source

	tenant   *silo.Tenant // as loaded; its shard is the source until the flip
	name     string       // the tenant's database and role, on both shards
	src, dst *provisioner.ShardAdmin
}

// movePlan copies the tenant's database to the target shard, by logical
// replication or, where that cannot run safely, by a copy while the tenant
// is paused; cuts over; and retires the source. Any failure before the
// tenant's row points at the target undoes everything on the target and
// leaves the tenant working on the source.
//
// Everything that touches the tenant's objects runs as the tenant's own
// login role: the schema's dump and restore, the data copy, sequences,
// counts, triggers, and on PostgreSQL 16 and later the subscription
// itself. The admin only makes the role and database, the publication,
// and on 15 the subscription, whose apply then runs as a superuser: the
// tenant's triggers are disabled on the target meanwhile, and a schema
// whose expressions call functions goes by the paused copy instead.
//
// The cutover is the pivot: its flip of the tenant's row to the target
// marks it in the same transaction. Before it, a failure undoes the move;
// after it, the target is the tenant's only live copy, and the move only
// goes forward (its cleanup is retried until the source is tidied).
func (r *Rebalancer) movePlan(op *silo.Operation, params map[string]any) (engine.Plan, error) {
	m := &move{r: r, op: op, id: op.TenantID}
	m.from, _ = params["from"].(string)
	m.to, _ = params["to"].(string)
	if m.from == "" || m.to == "" {
		return engine.Plan{}, silo.Errorf(silo.EINTERNAL, "move operation %s has no shards", op.ID)
	}
	m.targetMade, _ = params["targetMade"].(bool)
	m.dump, _ = params["dump"].(bool)
	m.triggers = decodeTriggers(params["triggers"])
	m.identities = decodeIdentities(params["identities"])
	m.pub = "silo_move"
	return engine.Plan{Steps: []engine.Step{
		{Name: "check-source", Run: m.unlessFlipped(m.checkSource)},
		{Name: "target-database", Run: m.unlessFlipped(m.targetDatabase)},
		{Name: "copy-schema", Run: m.unlessFlipped(m.copySchema)},
		{Name: "prepare-target", Run: m.unlessFlipped(m.prepareTarget)},
		{Name: "replicate", Run: m.unlessFlipped(m.replicate), Timeout: moveCopyTimeout},
		{Name: "initial-copy", Run: m.unlessFlipped(m.initialCopy), Timeout: moveCopyTimeout},
		{Name: "cutover", Run: m.unlessFlipped(m.cutover)},
		{Name: "cleanup", Run: m.cleanup},
	}, Undo: []engine.Step{
		{Name: "undo:replication", Run: m.undoReplication},
		{Name: "undo:target-database", Run: m.undoTarget},
		{Name: "undo:source", Run: m.undoSource},
	}, Pivot: "cutover"}, nil
}

// load reads the tenant and opens both shards' admin pools, once.
func (m *move) load(ctx context.Context) error {
	var err error
	if m.tenant == nil {
		t, err := m.r.store.GetTenant(ctx, m.id)
		if err != nil {
			return err
		}
		if err := silo.ValidateDatabaseName(t.Database); err != nil {
			return err
		}
		m.tenant, m.name = t, t.Database
		m.slot = "silo_move_" + m.name // one move per tenant at a time; unique on the source
	}
	if m.src == nil {
		if m.src, err = m.r.prov.ShardAdmin(ctx, m.from); err != nil {
			return err
		}
	}
	if m.dst == nil {
		m.dst, err = m.r.prov.ShardAdmin(ctx, m.to)
	}
	return err
}

// unlessFlipped skips a step once the catalog points the tenant at the
// target: a resumed move goes on to its cleanup.
func (m *move) unlessFlipped(run func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		t, err := m.r.store.GetTenant(ctx, m.id)
		if err != nil || t.Shard == m.to {
			return err
		}
		if err := m.load(ctx); err != nil {
			return err
		}
		return run(ctx)
	}
}

// copyProgress returns a progress function for copyData that records the
// bytes copied in the operation's parameters (copiedBytes) at most once a
// second, for those who follow the move (silo tenant move --wait), and
// flush, which records the last count.
func (m *move) copyProgress(ctx context.Context) (progress func(int64), flush func()) {
	var last time.Time
	var n, recorded int64
	record := func() {
		if err := m.setParams(ctx, map[string]any{"copiedBytes": n}); err != nil {
			m.r.log.Debug("move: progress not recorded", "tenant", m.id, "err", err)
		}
		recorded, last = n, time.Now()
	}
	progress = func(copied int64) {
		if n = copied; time.Since(last) >= time.Second {
			record()
		}
	}
	flush = func() {
		if n != recorded {
			record()
		}
	}
	return progress, flush
}

// setParams records what the move learned, so a resumed run knows it.
func (m *move) setParams(ctx context.Context, params map[string]any) error {
	return m.r.store.SetOperationParams(ctx, nil, m.op.ID, params)
}

// checkSource refuses a tenant that no move can carry (carriable: checked
// again here, for moves started by a rebalance or before the tenant made
// a large object), chooses the paused copy for a source without logical
// replication, and waits out a migration of the tenant.
func (m *move) checkSource(ctx context.Context) error {
	if err := m.load(ctx); err != nil {
		return err
	}
	if err := m.r.carriable(ctx, m.tenant, m.from); err != nil {
		return err
	}
	var level string
	if err := m.src.Pool().QueryRow(ctx, `SELECT pg_catalog.current_setting('wal_level')`).Scan(&level); err != nil {
		return shardmap.ShardError(err, m.from)
	}
	if level != "logical" && !m.dump {
		m.r.log.WarnContext(ctx, "shard has no logical replication: the tenant is moved by a copy, paused meanwhile",
			"shard", m.from, "wal_level", level, "tenant", m.id)
		if err := m.choosePath(ctx, "dump", fmt.Sprintf("shard %q has wal_level %s, not logical", m.from, level)); err != nil {
			return err
		}
	}
	return m.r.awaitMigration(ctx, m.id)
}

// choosePath records how the data moves, and why.
func (m *move) choosePath(ctx context.Context, path, reason string) error {
	m.dump = path == "dump"
	return m.setParams(ctx, map[string]any{"dump": m.dump, "path": path, "pathReason": reason})
}

func (m *move) targetDatabase(ctx context.Context) error {
	var exists, hasRole bool
	if err := m.dst.Pool().QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1),
		       EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)`, m.name).Scan(&exists, &hasRole); err != nil {
		return shardmap.ShardError(err, m.to)
	}
	if (exists || hasRole) && !m.targetMade {
		return silo.Errorf(silo.ECONFLICT, "shard %q already has a database or role %s that this move did not make", m.to, m.name)
	}
	// Recorded first: a crash before the database is made leaves a flag
	// and nothing to drop, never a database the undo would not drop.
	if !m.targetMade {
		if err := m.setParams(ctx, map[string]any{"targetMade": true}); err != nil {
			return err
		}
		m.targetMade = true
	}
	// The tenant's role, with its password and limits, and an empty
	// database: its schema comes from the source, whole.
	return m.r.prov.EnsureEmptyDatabase(ctx, m.tenant, m.to)
}

// copySchema dumps the source's schema as the tenant and restores it on
// the target as the tenant, who so owns everything it gets.
func (m *move) copySchema(ctx context.Context) error {
	dconn, err := m.r.dialer.ConnectTenant(ctx, m.tenant, m.to)
	if err != nil {
		return err
	}
	defer dconn.Close(context.WithoutCancel(ctx))
	var tables int
	if err := dconn.QueryRow(ctx, `SELECT pg_catalog.count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND `+tenantSchemas).Scan(&tables); err != nil {
		return shardmap.ShardError(err, m.to)
	}
	if tables > 0 {
		return nil // copied by an earlier attempt
	}
	// The fence is made later; left out all the same, as the tenant may
	// not read it.
	schema, err := m.r.prov.DumpSchema(ctx, m.tenant, m.from, fenceSchema)
	if err != nil {
		return err
	}
	if _, err := dconn.Exec(ctx, schema); err != nil {
		return silo.WrapError(err, silo.EINTERNAL, "copy the schema of tenant %q to shard %q: %v", m.id, m.to, err)
	}
	return nil
}

// prepareTarget disables the tenant's triggers on the target for the
// copy, recording their states to restore at the cutover (the source's
// triggers already did their work on the rows that arrive), and chooses
// the path: on PostgreSQL 15 the apply runs as a superuser, so a schema
// whose expressions (indexes, checks, domains, defaults, generated
// columns, partition keys) call anything a tenant controls, or a built-in
// that reaches past the session, is moved by the paused copy, as the
// tenant.
func (m *move) prepareTarget(ctx context.Context) error {
	dconn, err := m.r.dialer.ConnectTenant(ctx, m.tenant, m.to)
	if err != nil {
		return err
	}
	defer dconn.Close(context.WithoutCancel(ctx))
	if m.triggers == nil {
		states, err := readTriggers(ctx, dconn)
		if err != nil {
			return shardmap.ShardError(err, m.to)
		}
		if err := m.setParams(ctx, map[string]any{"triggers": states}); err != nil {
			return err
		}
		m.triggers = states
	}
	if err := disableTriggers(ctx, dconn, m.triggers); err != nil {
		return shardmap.ShardError(err, m.to)
	}
	if m.dump || m.dst.Major() >= 16 {
		if !m.dump {
			return m.choosePath(ctx, "live", fmt.Sprintf("PostgreSQL %d applies the changes as the tenant's own role", m.dst.Major()))
		}
		return nil
	}
	calls, err := unsafeExpressions(ctx, dconn)
	if err != nil {
		return shardmap.ShardError(err, m.to)
	}
	if len(calls) > 0 {
		return m.choosePath(ctx, "dump", fmt.Sprintf("shard %q runs PostgreSQL %d, whose replication would evaluate %s as a superuser",
			m.to, m.dst.Major(), strings.Join(calls, "; ")))
	}
	return m.choosePath(ctx, "live", fmt.Sprintf("PostgreSQL %d: no expression of the schema calls a function the tenant controls, and its triggers are disabled on the target", m.dst.Major()))
}

// replicate makes the fence on both sides (as the admin), gives the
// tenant's tables without a replica identity REPLICA IDENTITY FULL on the
// source (as the tenant), publishes the tenant's tables there (as the
// admin: only a superuser may publish all tables; it runs nothing of the
// tenant's), makes the replication slot, copies the rows of the logged
// tables as of the slot's snapshot from a tenant session on the source to
// one on the target, and subscribes the target to the slot's changes from
// there. Unlogged tables are not replicated: the cutover copies them.
//
// Silo copies the rows itself (the subscription has copy_data = false):
// a subscription's own initial copy reads each table on the source over
// its connection, the source admin's, and a tenant that swapped a table
// for a view meanwhile would have the view's functions run as that admin.
func (m *move) replicate(ctx context.Context) error {
	if m.dump {
		return nil
	}
	if done, err := m.subscribed(ctx); done || err != nil {
		return err
	}
	// The fence's row is in both before the slot exists, so the slot
	// carries only its updates.
	for _, shard := range []string{m.from, m.to} {
		if err := m.onAdmin(ctx, shard, func(c *pgx.Conn) error { return makeFence(ctx, c, m.id) }); err != nil {
			return shardmap.ShardError(err, shard)
		}
	}
	if err := m.fullIdentities(ctx); err != nil {
		return err
	}
	err := m.onAdmin(ctx, m.from, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, "CREATE PUBLICATION "+ident(m.pub)+" FOR ALL TABLES")
		if shardmap.SQLState(err) == "42710" { // duplicate_object: an earlier attempt made it
			return nil
		}
		return err
	})
	if err != nil {
		return shardmap.ShardError(err, m.from)
	}
	if err := m.copyAtSlot(ctx); err != nil {
		return err
	}
	conninfo, err := m.r.conninfo(ctx, m.from, m.name)
	if err != nil {
		return err
	}
	create := "CREATE SUBSCRIPTION " + ident(m.slot) + " CONNECTION " + quoteLiteral(conninfo) +
		" PUBLICATION " + ident(m.pub) + " WITH (slot_name = " + quoteLiteral(m.slot) +
		", create_slot = false, copy_data = false" +
		// Commits on the target flush at once: what it reports applied to
		// the source's slot is on its disk.
		", synchronous_commit = 'on'"
	if m.dst.Major() < 16 {
		// Only a superuser may own a subscription on 15.
		err = m.onAdmin(ctx, m.to, func(c *pgx.Conn) error { _, err := c.Exec(ctx, create+")"); return err })
	} else {
		err = m.subscribeAsOwnRole(ctx, create+", run_as_owner = false, password_required = true)")
	}
	return shardmap.ShardError(err, m.to)
}

// fullIdentities gives REPLICA IDENTITY FULL, as the tenant, to its
// tables on the source that have no replica identity, once their
// identities are recorded (operation parameter identities): the cutover
// sets them back on both sides, and so does the undo on the source, a
// resumed run included.
func (m *move) fullIdentities(ctx context.Context) error {
	conn, err := m.r.dialer.ConnectTenant(ctx, m.tenant, m.from)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if m.identities == nil {
		states, err := readIdentities(ctx, conn)
		if err != nil {
			return shardmap.ShardError(err, m.from)
		}
		if err := m.setParams(ctx, map[string]any{"identities": states}); err != nil {
			return err
		}
		m.identities = states
	}
	return shardmap.ShardError(setIdentities(ctx, conn, m.identities, true), m.from)
}

// subscribed reports whether the move's subscription exists on the target.
func (m *move) subscribed(ctx context.Context) (bool, error) {
	var exists bool
	err := m.onAdmin(ctx, m.to, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_subscription WHERE subslotname = $1)`, m.slot).Scan(&exists)
	})
	return exists, shardmap.ShardError(err, m.to)
}

// copyAtSlot makes the move's replication slot on the source (dropping
// one an earlier attempt left), and copies the tenant's rows as of the
// slot's snapshot, as the tenant on both sides: the slot's changes then
// follow the copy exactly.
func (m *move) copyAtSlot(ctx context.Context) error {
	if err := m.r.prov.DropSlot(ctx, m.from, m.slot); err != nil {
		return err
	}
	cfg, err := m.r.dialer.AdminConfig(ctx, m.from, m.name)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["replication"] = "database"
	repl, err := pgconn.ConnectConfig(ctx, &cfg.Config)
	if err != nil {
		return shardmap.ShardError(err, m.from)
	}
	defer repl.Close(context.WithoutCancel(ctx))
	// The snapshot lives until the replication connection's next command.
	res, err := repl.Exec(ctx, "CREATE_REPLICATION_SLOT "+ident(m.slot)+" LOGICAL pgoutput EXPORT_SNAPSHOT").ReadAll()
	if err != nil {
		return shardmap.ShardError(err, m.from)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 3 {
		return silo.Errorf(silo.EINTERNAL, "shard %q answered CREATE_REPLICATION_SLOT oddly", m.from)
	}
	snapshot := string(res[0].Rows[0][2])
	sconn, err := m.r.dialer.ConnectTenant(ctx, m.tenant, m.from)
	if err != nil {
		return err
	}
	defer sconn.Close(context.WithoutCancel(ctx))
	dconn, err := m.r.dialer.ConnectTenant(ctx, m.tenant, m.to)
	if err != nil {
		return err
	}
	defer dconn.Close(context.WithoutCancel(ctx))
	progress, flush := m.copyProgress(ctx)
	if err := copyData(ctx, sconn, dconn, snapshot, loggedTables, progress); err != nil {
		return silo.WrapError(err, silo.EINTERNAL, "copy tenant %q's rows to shard %q: %v", m.id, m.to, err)
	}
	flush()
	return nil
}

// subscribeAsOwnRole creates the subscription (PostgreSQL 16 and later)
// as a role of the move's own: no superuser, and not the tenant, who so
// cannot alter it, while run_as_owner = false makes its apply run as each
// table's owner, the tenant, under a security-restricted context.
func (m *move) subscribeAsOwnRole(ctx context.Context, create string) error {
	owner := ident(m.subOwner())
	for _, stmt := range []string{
		// LOGIN, without a password: the apply worker starts a session
		// as the subscription's owner, and no password reaches it.
		"CREATE ROLE " + owner + " LOGIN",
		"GRANT pg_create_subscription TO " + owner,
		"GRANT " + ident(m.name) + " TO " + owner, // to apply as the tables' owner
		"GRANT CREATE ON DATABASE " + ident(m.name) + " TO " + owner,
	} {
		if _, err := m.dst.Pool().Exec(ctx, stmt); err != nil && shardmap.SQLState(err) != "42710" {
			return err
		}
	}
	// Nothing of the tenant's runs in this session: CREATE SUBSCRIPTION
	// without a copy only reads the publication's catalog on the source.
	return m.onAdmin(ctx, m.to, func(c *pgx.Conn) error {
		// The apply writes each table as its owner, and may act only as a
		// role it can SET ROLE to: the tenant, and itself. So the
		// target's fence is its own (an admin's fence fails the apply:
		// "cannot SET ROLE"), with USAGE on the fence's schema, where
		// CREATE SUBSCRIPTION looks the table up by name; nothing more.
		if _, err := c.Exec(ctx, "ALTER TABLE "+ident(fenceSchema)+".fence OWNER TO "+owner+
			"; GRANT USAGE ON SCHEMA "+ident(fenceSchema)+" TO "+owner); err != nil {
			return err
		}
		_, err := c.Exec(ctx, "SET ROLE "+owner+"; "+create+"; RESET ROLE")
		return err
	})
}

// subOwner is the role that owns the move's subscription on 16 and later.
func (m *move) subOwner() string { return "silo_sub_" + m.name }

// initialCopy waits for the subscription to be ready on every table, and
// then for the target to apply what the source committed so far (a fence,
// the tenant still working): the cutover's pause then waits only for the
// moments since. On a busy shard the slot's decoding reads every
// database's WAL, and that wait would be long.
func (m *move) initialCopy(ctx context.Context) error {
	if m.dump {
		return nil
	}
	err := m.onAdmin(ctx, m.to, func(c *pgx.Conn) error {
		for {
			var pending int
			if err := c.QueryRow(ctx, `
				SELECT count(*) FROM pg_catalog.pg_subscription_rel r JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid
				WHERE s.subname = $1 AND r.srsubstate NOT IN ('r', 's')`, m.slot).Scan(&pending); err != nil {
				return shardmap.ShardError(err, m.to)
			}
			if pending == 0 {
				return nil
			}
			// A table whose copy fails is retried by PostgreSQL for ever:
			// give up instead, and undo.
			var syncErrors int64
			if err := c.QueryRow(ctx, `
				SELECT coalesce(sum(sync_error_count), 0) FROM pg_catalog.pg_stat_subscription_stats WHERE subname = $1`,
				m.slot).Scan(&syncErrors); err != nil {
				return shardmap.ShardError(err, m.to)
			}
			if syncErrors > 0 {
				return silo.Errorf(silo.EINTERNAL, "the copy of tenant %q's tables to shard %q failed (see the shard's log)", m.id, m.to)
			}
			select {
			case <-ctx.Done():
				return silo.WrapError(ctx.Err(), silo.ETIMEOUT, "the copy of tenant %q to shard %q did not finish in time", m.id, m.to)
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	if err != nil {
		return err
	}
	return m.awaitFence(ctx, moveCopyTimeout)
}

func (m *move) cutover(ctx context.Context) error {
	if m.dump {
		return m.dumpCutover(ctx)
	}
	return m.liveCutover(ctx)
}

func (m *move) cleanup(ctx context.Context) error {
	if err := m.load(ctx); err != nil {
		return err
	}
	if err := m.removeReplication(ctx); err != nil {
		return err
	}
	return m.r.prov.RetireDatabase(ctx, m.id, m.from, m.name)
}

func (m *move) undoReplication(ctx context.Context) error {
	if err := m.load(ctx); err != nil {
		return err
	}
	return m.removeReplication(ctx)
}

func (m *move) undoTarget(ctx context.Context) error {
	if !m.targetMade {
		return nil // not ours to drop
	}
	if err := m.load(ctx); err != nil {
		return err
	}
	// Once the catalog points at the target, the target is the tenant's
	// only live copy: a failure after the flip (the cleanup's) leaves it.
	// Issue 12's engine makes the flip a pivot no undo passes.
	if t, err := m.r.store.GetTenant(ctx, m.id); err != nil || t.Shard == m.to {
		return err
	}
	return m.r.prov.DropDatabaseAndRole(ctx, m.to, m.name)
}

func (m *move) undoSource(ctx context.Context) error {
	if err := m.load(ctx); err != nil {
		return err
	}
	t, err := m.r.store.GetTenant(ctx, m.id)
	if err != nil || t.Shard == m.to {
		return err // flipped: the source is retired, not restored
	}
	if err := m.r.prov.SetLogin(ctx, m.from, m.name, true); err != nil {
		return err
	}
	if len(m.identities) > 0 {
		// The publication is gone (undo:replication): the tables' own
		// identities are back before the tenant may need them.
		conn, err := m.r.dialer.ConnectTenant(ctx, m.tenant, m.from)
		if err != nil {
			return err
		}
		err = setIdentities(ctx, conn, m.identities, false)
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return shardmap.ShardError(err, m.from)
		}
	}
	if t.State == silo.TenantMoving {
		t.State = silo.TenantActive
		_, err = m.r.store.UpdateTenantTx(ctx, nil, *t)
	}
	return err
}

// onAdmin runs f on an admin session on the tenant's database on shard:
// only for publications, subscriptions and pg_catalog reads.
func (m *move) onAdmin(ctx context.Context, shard string, f func(*pgx.Conn) error) error {
	conn, err := m.r.dialer.ConnectAdmin(ctx, shard, m.name)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return f(conn)
}

// awaitMigration waits until no migration run is migrating the tenant: the
// runner holds migrations.TenantLockClass on it while it does, and starts
// none while an operation (this move) runs on the tenant.
func (r *Rebalancer) awaitMigration(ctx context.Context, id string) error {
	conn, err := r.catalog.Acquire(ctx)
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

// countMovedBytes adds the moved database's size on the target to the
// bytes-moved metric.
func (r *Rebalancer) countMovedBytes(ctx context.Context, dst *pgx.Conn) {
	var size int64
	if err := dst.QueryRow(ctx, `SELECT pg_catalog.pg_database_size(pg_catalog.current_database())`).Scan(&size); err == nil {
		r.metrics.moveBytes.Add(float64(size))
	}
}

// removeReplication removes what the move made for its replication: the
// subscription, the fence (and on 16 and later the subscription's own
// role) on the target, the slot, the publication and the fence on the
// source. Each may be gone already.
func (m *move) removeReplication(ctx context.Context) error {
	// The subscription first: dropping it drops its slot on the source. It
	// is found by its slot, whatever it is called.
	err := m.onAdmin(ctx, m.to, func(c *pgx.Conn) error {
		var sub string
		err := c.QueryRow(ctx, `SELECT subname FROM pg_catalog.pg_subscription WHERE subslotname = $1`, m.slot).Scan(&sub)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := c.Exec(ctx, "ALTER SUBSCRIPTION "+ident(sub)+" DISABLE"); err != nil {
			return err
		}
		_, err = c.Exec(ctx, "DROP SUBSCRIPTION "+ident(sub))
		if err != nil {
			// The source cannot be reached: forget the slot here and drop
			// it there below.
			if _, err := c.Exec(ctx, "ALTER SUBSCRIPTION "+ident(sub)+" SET (slot_name = NONE)"); err != nil {
				return err
			}
			_, err = c.Exec(ctx, "DROP SUBSCRIPTION "+ident(sub))
		}
		return err
	})
	if err != nil && shardmap.SQLState(err) != "3D000" { // the target database is gone already
		return shardmap.ShardError(err, m.to)
	}
	// Before the subscription's role: on 16 and later the target's fence
	// is that role's.
	if err := m.onAdmin(ctx, m.to, func(c *pgx.Conn) error { return dropFence(ctx, c) }); err != nil && shardmap.SQLState(err) != "3D000" {
		return shardmap.ShardError(err, m.to)
	}
	if m.dst.Major() >= 16 {
		// The subscription's own role (subscribeAsOwnRole), once it owns
		// nothing: its grant on the database goes with the database, or
		// first.
		owner := ident(m.subOwner())
		if _, err := m.dst.Pool().Exec(ctx, "REVOKE CREATE ON DATABASE "+ident(m.name)+" FROM "+owner); err != nil &&
			shardmap.SQLState(err) != "42704" && shardmap.SQLState(err) != "3D000" {
			return shardmap.ShardError(err, m.to)
		}
		if _, err := m.dst.Pool().Exec(ctx, "DROP ROLE IF EXISTS "+owner); err != nil {
			return shardmap.ShardError(err, m.to)
		}
	}
	if err := m.r.prov.DropSlot(ctx, m.from, m.slot); err != nil {
		return err
	}
	err = m.onAdmin(ctx, m.from, func(c *pgx.Conn) error {
		if _, err := c.Exec(ctx, "DROP PUBLICATION IF EXISTS "+ident(m.pub)); err != nil {
			return err
		}
		return dropFence(ctx, c)
	})
	if err != nil && shardmap.SQLState(err) != "3D000" {
		return shardmap.ShardError(err, m.from)
	}
	return nil
}

// conninfo is how the target's subscription reaches the tenant's database
// on the source: as the source's admin (a replication connection needs
// it), password included, as a subscription keeps it. No tenant can read
// it (pg_subscription.subconninfo is for superusers).
func (r *Rebalancer) conninfo(ctx context.Context, shard, db string) (string, error) {
	cfg, err := r.dialer.AdminConfig(ctx, shard, db)
	if err != nil {
		return "", err
	}
	return shardmap.Conninfo(cfg) + " password=" + shardmap.QuoteConninfo(cfg.Password), nil
}

// ident quotes a name that was validated against the tenant-id grammar (or
// made by Silo) for use in DDL.
func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// describeMove fills in a move's outcome from its parameters: its path,
// why, and its write pause.
func (r *Rebalancer) describeMove(ctx context.Context, op *silo.Operation) error {
	params, err := r.store.OperationParams(ctx, op.ID)
	if err != nil {
		return err
	}
	m := &silo.MoveOutcome{}
	m.Path, _ = params["path"].(string)
	m.PathReason, _ = params["pathReason"].(string)
	if v, ok := params["pauseMs"].(float64); ok {
		m.PauseMs = int64(v)
	}
	if v, ok := params["copiedBytes"].(float64); ok {
		m.CopiedBytes = int64(v)
	}
	op.Move = m
	return nil
}
