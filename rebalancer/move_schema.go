package rebalancer

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
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
