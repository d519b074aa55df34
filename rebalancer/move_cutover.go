package rebalancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
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

// readOnly starts a repeatable-read, read-only transaction on Silo's
// session as the tenant on the paused source: whatever of the tenant's
// runs in it while the cutover reads cannot write.
func readOnly(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
	return err
}

// compareReadOnly compares the rows of both sides (compareCounts), the
// target's in a read-only transaction too.
func compareReadOnly(ctx context.Context, src, dst *pgx.Conn) error {
	if err := readOnly(ctx, dst); err != nil {
		return err
	}
	defer func() { _, _ = dst.Exec(context.WithoutCancel(ctx), "ROLLBACK") }()
	return compareCounts(ctx, src, dst)
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

// userTables lists a database's tables that hold rows (partitions, not
// their parents), quoted, in an order that loads referenced tables before
// the tables whose foreign keys point at them.
func userTables(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `
		SELECT c.oid::int8, pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'r' AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
		ORDER BY 2`)
	if err != nil {
		return nil, err
	}
	type table struct {
		oid  int64
		name string
	}
	tables, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (table, error) {
		var t table
		return t, r.Scan(&t.oid, &t.name)
	})
	if err != nil {
		return nil, err
	}
	// Edges between the leaves of both sides of every foreign key.
	// (pg_partition_tree has no rows for a table that is not partitioned.)
	rows, err = conn.Query(ctx, `
		WITH leaves (rel, leaf) AS (
			SELECT c.oid, coalesce(t.relid::oid, c.oid) FROM pg_catalog.pg_class c
			LEFT JOIN LATERAL pg_catalog.pg_partition_tree(c.oid) t ON t.isleaf
			WHERE c.relkind IN ('r', 'p'))
		SELECT DISTINCT a.leaf::int8, b.leaf::int8 FROM pg_catalog.pg_constraint k
		JOIN leaves a ON a.rel = k.conrelid JOIN leaves b ON b.rel = k.confrelid
		WHERE k.contype = 'f' AND a.leaf <> b.leaf`)
	if err != nil {
		return nil, err
	}
	type edge struct{ from, to int64 }
	edges, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (edge, error) {
		var e edge
		return e, r.Scan(&e.from, &e.to)
	})
	if err != nil {
		return nil, err
	}
	needs := map[int64][]int64{}
	for _, e := range edges {
		needs[e.from] = append(needs[e.from], e.to)
	}
	var order []string
	state := map[int64]int{} // 1 visiting, 2 done
	names := map[int64]string{}
	for _, t := range tables {
		names[t.oid] = t.name
	}
	var visit func(oid int64)
	visit = func(oid int64) {
		if state[oid] != 0 {
			return // done, or a cycle: its deferrable keys are checked at commit
		}
		state[oid] = 1
		for _, dep := range needs[oid] {
			visit(dep)
		}
		state[oid] = 2
		if name, ok := names[oid]; ok {
			order = append(order, name)
		}
	}
	for _, t := range tables {
		visit(t.oid)
	}
	return order, nil
}

// copyData replaces the target's rows with the source's, table by table,
// in one transaction on the target: COPY out of one tenant session into
// the other, in text with the same settings on both sides (binary COPY
// would carry type OIDs that differ between the databases). The source is
// read in one repeatable-read, read-only transaction, at snapshot when one
// is given (a replication slot's, so that the slot's changes follow the
// copy exactly). The tenant's triggers on the target are disabled
// (prepareTarget), so neither the TRUNCATE of an earlier attempt's rows
// nor the rows fire them.
func copyData(ctx context.Context, src, dst *pgx.Conn, snapshot string) error {
	const settings = "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3; SET bytea_output = hex"
	if _, err := src.Exec(ctx, settings); err != nil {
		return err
	}
	if _, err := src.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return err
	}
	defer func() { _, _ = src.Exec(context.WithoutCancel(ctx), "ROLLBACK") }()
	if snapshot != "" {
		if _, err := src.Exec(ctx, "SET TRANSACTION SNAPSHOT "+quoteLiteral(snapshot)); err != nil {
			return err
		}
	}
	tables, err := userTables(ctx, src)
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, dst, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, settings+"; SET CONSTRAINTS ALL DEFERRED"); err != nil {
			return err
		}
		if len(tables) == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, "TRUNCATE "+strings.Join(tables, ", ")+" CASCADE"); err != nil {
			return err
		}
		for _, table := range tables {
			if err := copyTable(ctx, src, dst, table); err != nil {
				return fmt.Errorf("table %s: %w", table, err)
			}
		}
		return nil
	})
}

// copyTable streams one table's rows from src to dst.
func copyTable(ctx context.Context, src, dst *pgx.Conn, table string) error {
	r, w := io.Pipe()
	out := make(chan error, 1)
	go func() {
		_, err := src.PgConn().CopyTo(ctx, w, "COPY "+table+" TO STDOUT")
		w.CloseWithError(err)
		out <- err
	}()
	_, err := dst.PgConn().CopyFrom(ctx, r, "COPY "+table+" FROM STDIN")
	r.CloseWithError(err)
	if oerr := <-out; err == nil {
		err = oerr
	}
	return err
}

// triggerState is one of the tenant's triggers on the target, and whether
// it fires (pg_trigger.tgenabled: O origin, A always, R replica, D never).
type triggerState struct {
	Table   string `json:"table"` // quoted
	Name    string `json:"name"`
	Enabled string `json:"enabled"`
}

// readTriggers lists a database's user triggers as they stand.
func readTriggers(ctx context.Context, conn *pgx.Conn) ([]triggerState, error) {
	rows, err := conn.Query(ctx, `
		SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), t.tgname, t.tgenabled::text
		FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE NOT t.tgisinternal AND c.relkind IN ('r', 'p') ORDER BY 1, 2`) // a view's INSTEAD OF triggers fire in no copy
	if err != nil {
		return nil, err
	}
	states, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (triggerState, error) {
		var s triggerState
		return s, r.Scan(&s.Table, &s.Name, &s.Enabled)
	})
	if states == nil {
		states = []triggerState{} // recorded: known to have none
	}
	return states, err
}

// disableTriggers turns off the user triggers of every table that has any.
func disableTriggers(ctx context.Context, conn *pgx.Conn, states []triggerState) error {
	var tables []string
	for _, s := range states {
		if !slices.Contains(tables, s.Table) {
			tables = append(tables, s.Table)
		}
	}
	for _, table := range tables {
		if _, err := conn.Exec(ctx, "ALTER TABLE "+table+" DISABLE TRIGGER USER"); err != nil {
			return err
		}
	}
	return nil
}

// restoreTriggers sets every trigger back to its recorded state.
func restoreTriggers(ctx context.Context, conn *pgx.Conn, states []triggerState) error {
	verbs := map[string]string{"O": "ENABLE TRIGGER ", "A": "ENABLE ALWAYS TRIGGER ", "R": "ENABLE REPLICA TRIGGER ", "D": "DISABLE TRIGGER "}
	var b strings.Builder
	for _, s := range states {
		verb, ok := verbs[s.Enabled]
		if !ok {
			return fmt.Errorf("trigger %s on %s has an unknown state %q", s.Name, s.Table, s.Enabled)
		}
		b.WriteString("ALTER TABLE " + s.Table + " " + verb + ident(s.Name) + ";")
	}
	if b.Len() == 0 {
		return nil
	}
	_, err := conn.Exec(ctx, b.String())
	return err
}

// decodeTriggers reads recorded trigger states back from an operation's
// parameters; nil when none were recorded yet.
func decodeTriggers(v any) []triggerState {
	list, ok := v.([]any)
	if !ok {
		return nil
	}
	out := []triggerState{}
	for _, item := range list {
		m, _ := item.(map[string]any)
		table, _ := m["table"].(string)
		name, _ := m["name"].(string)
		enabled, _ := m["enabled"].(string)
		out = append(out, triggerState{Table: table, Name: name, Enabled: enabled})
	}
	return out
}

// unsafeExpressions lists the schema objects whose expressions (indexes,
// CHECK and domain constraints, defaults, generated columns, partition
// keys, types) would run, in a PostgreSQL 15 subscription's apply as a
// superuser, code the tenant controls (any function or operator outside
// pg_catalog but C functions of extensions, which no tenant can change) or
// a built-in that is not pure. Built-ins are allowed, not denied: only
// immutable ones, those stable for the time zone or DateStyle alone, and
// a few volatile ones defaults use (nextval, now, random,
// gen_random_uuid), that PUBLIC may execute. Many built-ins check
// privileges themselves, which a superuser passes: replication slots,
// other backends' activity, settings, SQL given as text. Defaults count: a
// column the tenant drops on the source during the move is filled from its
// default on the target.
func unsafeExpressions(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	// The calls are read from the stored expression trees: pg_depend
	// records none on built-ins (they are pinned). An operator's function
	// may be unset in a stored tree; its operator is not. Objects below
	// 16384 are the system's own.
	rows, err := conn.Query(ctx, `
		WITH trees (what, tree) AS (
			SELECT pg_catalog.pg_describe_object('pg_catalog.pg_class'::pg_catalog.regclass, indexrelid, 0), indexprs::text
			FROM pg_catalog.pg_index WHERE indexprs IS NOT NULL AND indexrelid >= 16384
			UNION ALL SELECT pg_catalog.pg_describe_object('pg_catalog.pg_class'::pg_catalog.regclass, indexrelid, 0), indpred::text
			FROM pg_catalog.pg_index WHERE indpred IS NOT NULL AND indexrelid >= 16384
			UNION ALL SELECT pg_catalog.pg_describe_object('pg_catalog.pg_constraint'::pg_catalog.regclass, oid, 0), conbin::text
			FROM pg_catalog.pg_constraint WHERE conbin IS NOT NULL AND oid >= 16384
			UNION ALL SELECT pg_catalog.pg_describe_object('pg_catalog.pg_attrdef'::pg_catalog.regclass, oid, 0), adbin::text
			FROM pg_catalog.pg_attrdef WHERE oid >= 16384
			UNION ALL SELECT pg_catalog.pg_describe_object('pg_catalog.pg_class'::pg_catalog.regclass, partrelid, 0), partexprs::text
			FROM pg_catalog.pg_partitioned_table WHERE partexprs IS NOT NULL AND partrelid >= 16384
		), calls (what, fn) AS (
			SELECT what, m[1]::pg_catalog.oid FROM trees, pg_catalog.regexp_matches(tree, ':(?:funcid|opfuncid) (\d+)', 'g') m
			UNION ALL
			SELECT what, o.oprcode::pg_catalog.oid FROM trees, pg_catalog.regexp_matches(tree, ':opno (\d+)', 'g') m
				JOIN pg_catalog.pg_operator o ON o.oid = m[1]::pg_catalog.oid
			UNION ALL
			SELECT what, o.oprcode::pg_catalog.oid FROM trees, pg_catalog.regexp_matches(tree, ':opnos \(o ([0-9 ]+)\)', 'g') m,
				pg_catalog.unnest(pg_catalog.string_to_array(m[1], ' ')) x JOIN pg_catalog.pg_operator o ON o.oid = x::pg_catalog.oid
			UNION ALL
			-- A range type's subtype difference runs in its GiST indexes.
			SELECT pg_catalog.format('range type %s', rngtypid::pg_catalog.regtype), rngsubdiff::pg_catalog.oid
			FROM pg_catalog.pg_range WHERE rngtypid >= 16384
		)
		SELECT DISTINCT pg_catalog.format('%s calls %s', calls.what, p.oid::pg_catalog.regprocedure)
		FROM calls JOIN pg_catalog.pg_proc p ON p.oid = calls.fn
		JOIN pg_catalog.pg_language l ON l.oid = p.prolang
		WHERE CASE WHEN p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
		      THEN (p.provolatile <> 'i' AND p.proname NOT IN (
		               -- volatile, for defaults
		               'nextval', 'currval', 'random', 'gen_random_uuid', 'now', 'statement_timestamp',
		               'transaction_timestamp', 'clock_timestamp', 'timeofday',
		               -- stable only for the time zone or DateStyle
		               'timestamp', 'timestamptz', 'date', 'time', 'timetz', 'timezone', 'to_char', 'to_date',
		               'to_timestamp', 'date_trunc', 'date_part', 'extract', 'age', 'date_bin', 'make_timestamptz',
		               'text', 'to_json', 'to_jsonb', 'json_build_object', 'jsonb_build_object',
		               'json_build_array', 'jsonb_build_array'))
		           OR NOT pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE')
		      ELSE l.lanname <> 'c' OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
		           WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND e.objid = p.oid AND e.deptype = 'e')
		END
		ORDER BY 1 LIMIT 5`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
