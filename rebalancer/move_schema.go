package rebalancer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// What a move changes of the tenant's schema for its duration and sets
// back, and what it checks of it: triggers, replica identities, the
// fence, and what no move can carry.

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

// fenceSchema is the schema of Silo's own that a live move makes, as the
// admin, in the tenant's database on both shards: it holds the fence, a
// one-row table that the cutover writes on the source, once the tenant is
// paused, and waits to see on the target (awaitFence). The tenant has no
// privilege on it; pg_dump as the tenant and every tenant-side copy and
// count leave it out (tenantSchemas); the replication's removal drops it.
const fenceSchema = "silo_move"

// tenantSchemas is the SQL condition on pg_namespace n that selects the
// schemas of the tenant's own: not the system's, nor the move's fence.
const tenantSchemas = `n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema' AND n.nspname <> '` + fenceSchema + `'`

// fenceNameFree returns ECONFLICT when the tenant has a schema named as
// the fence (one the admin did not make). admin is an admin session on the
// tenant's database.
func fenceNameFree(ctx context.Context, admin *pgx.Conn, id string) error {
	var taken bool
	if err := admin.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1
			AND nspowner <> (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user))`, fenceSchema).Scan(&taken); err != nil {
		return err
	}
	if taken {
		return silo.Errorf(silo.ECONFLICT, "tenant %q has a schema named %s, which a move keeps for itself: rename it, and move the tenant again", id, fenceSchema)
	}
	return nil
}

// largeObjects returns ECONFLICT, naming them, when the tenant's database
// holds large objects: logical replication does not carry them, nor does
// the paused copy, whose COPY reads tables only. conn is a session on the
// tenant's database, the admin's or the tenant's.
func largeObjects(ctx context.Context, conn *pgx.Conn, id string) error {
	var n int64
	var oids string
	if err := conn.QueryRow(ctx, `
		SELECT (SELECT pg_catalog.count(*) FROM pg_catalog.pg_largeobject_metadata),
		       coalesce((SELECT pg_catalog.string_agg(l.oid::pg_catalog.text, ', ' ORDER BY l.oid)
		                 FROM (SELECT oid FROM pg_catalog.pg_largeobject_metadata ORDER BY oid LIMIT 5) l), '')`).Scan(&n, &oids); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	what, label := "large objects", "OIDs"
	if n == 1 {
		what, label = "large object", "OID"
	}
	if n > 5 {
		oids += ", …"
	}
	return silo.Errorf(silo.ECONFLICT, "tenant %q has %d %s (%s %s), which a move cannot carry: "+
		"keep their contents in bytea columns, or remove them (lo_unlink), and move the tenant again", id, n, what, label, oids)
}

// makeFence makes the fence in the tenant's database, as the admin: the
// schema, the admin's, with no privilege for anyone else, and its table
// with its one row. It is idempotent, and inserts the row only where it is
// missing: once the slot exists, an insert on the source would reach the
// target's row again. ECONFLICT when the tenant has a schema of the name.
//
// The schema is made first and its owner checked after, never the other
// way round: a tenant that makes a schema of that name meanwhile (it sees
// the admin's session arrive) gets the move refused, and never has a
// trigger of its own on a table the admin writes. Once the schema is the
// admin's, nobody else can create anything in it.
func makeFence(ctx context.Context, admin *pgx.Conn, id string) error {
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+ident(fenceSchema)); err != nil && shardmap.SQLState(err) != "42P06" { // duplicate_schema: an earlier attempt's, or not ours
		return err
	}
	if err := fenceNameFree(ctx, admin, id); err != nil {
		return err
	}
	_, err := admin.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+ident(fenceSchema)+".fence (id pg_catalog.int4 PRIMARY KEY, token pg_catalog.text NOT NULL)"+
		"; INSERT INTO "+ident(fenceSchema)+".fence (id, token) VALUES (1, '') ON CONFLICT (id) DO NOTHING")
	return err
}

// dropFence drops the fence from the tenant's database, as the admin, if
// the admin made it: a tenant's schema of that name is never touched.
func dropFence(ctx context.Context, admin *pgx.Conn) error {
	var ours bool
	err := admin.QueryRow(ctx, `
		SELECT nspowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
		FROM pg_catalog.pg_namespace WHERE nspname = $1`, fenceSchema).Scan(&ours)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && !ours) {
		return nil
	}
	if err == nil {
		_, err = admin.Exec(ctx, "DROP SCHEMA "+ident(fenceSchema)+" CASCADE")
	}
	return err
}

// identityState is one of the tenant's tables that had no replica
// identity (no primary key, or REPLICA IDENTITY NOTHING), which a live
// move gives REPLICA IDENTITY FULL on the source while it is published:
// without one, the tenant's UPDATEs and DELETEs on it would fail there
// (55000, "does not have a replica identity and publishes updates").
type identityState struct {
	Table    string `json:"table"`    // quoted
	Identity string `json:"identity"` // pg_class.relreplident before the move: d or n
}

// readIdentities lists the tenant's published tables (logged, holding
// rows) that have no replica identity. A table whose identity index was
// dropped (i, without the index) has none either; it is set back as n,
// which behaves the same.
func readIdentities(ctx context.Context, conn *pgx.Conn) ([]identityState, error) {
	rows, err := conn.Query(ctx, `
		SELECT pg_catalog.format('%I.%I', n.nspname, c.relname),
		       CASE c.relreplident WHEN 'd' THEN 'd' ELSE 'n' END
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND `+tenantSchemas+`
		  AND CASE c.relreplident
		      WHEN 'd' THEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
		      WHEN 'i' THEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
		      ELSE c.relreplident = 'n' END
		ORDER BY 1`)
	if err != nil {
		return nil, err
	}
	states, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (identityState, error) {
		var s identityState
		return s, r.Scan(&s.Table, &s.Identity)
	})
	if states == nil {
		states = []identityState{} // recorded: known to have none
	}
	return states, err
}

// setIdentities gives each table REPLICA IDENTITY FULL (full), or sets
// its recorded identity back, in one transaction. conn is the tenant's own
// session: ALTER TABLE needs the table's owner. A table the tenant dropped
// meanwhile is passed by. The lock is waited for at most lockWait: the
// tenant's sessions may be using the tables.
func setIdentities(ctx context.Context, conn *pgx.Conn, states []identityState, full bool) error {
	if len(states) == 0 {
		return nil
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", lockWait.Milliseconds())); err != nil {
			return err
		}
		for _, s := range states {
			identity := map[string]string{"d": "DEFAULT", "n": "NOTHING"}[s.Identity]
			if full {
				identity = "FULL"
			}
			if identity == "" {
				return fmt.Errorf("table %s has an unknown replica identity %q recorded", s.Table, s.Identity)
			}
			var exists bool
			if err := tx.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, s.Table).Scan(&exists); err != nil {
				return err
			}
			if !exists {
				continue
			}
			// Table names quoted by format(%I) when they were read.
			if _, err := tx.Exec(ctx, "ALTER TABLE "+s.Table+" REPLICA IDENTITY "+identity); err != nil {
				return fmt.Errorf("table %s: %w", s.Table, err)
			}
		}
		return nil
	})
}

// lockWait bounds the wait for a lock on one of the tenant's tables that
// the move changes while the tenant works (its replica identity).
const lockWait = 10 * time.Second

// decodeIdentities reads recorded replica identities back from an
// operation's parameters; nil when none were recorded yet.
func decodeIdentities(v any) []identityState {
	list, ok := v.([]any)
	if !ok {
		return nil
	}
	out := []identityState{}
	for _, item := range list {
		m, _ := item.(map[string]any)
		table, _ := m["table"].(string)
		identity, _ := m["identity"].(string)
		out = append(out, identityState{Table: table, Identity: identity})
	}
	return out
}
