package rebalancer

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
)

// Copying and comparing a tenant's rows, sequences and materialized views
// between its sessions on the two shards, as the tenant.

// readOnly starts a repeatable-read, read-only transaction on Silo's
// session as the tenant on the paused source: whatever of the tenant's
// runs in it while the cutover reads cannot write.
func readOnly(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
	return err
}

// compareReadOnly compares what the flip needs of both sides, the
// target's in a read-only transaction too: every table's rows (their
// counts, and a checksum of the small ones), every materialized view's
// populated state, and every sequence's state. Any difference is an
// EINTERNAL error that undoes the move.
func compareReadOnly(ctx context.Context, src, dst *pgx.Conn) error {
	if err := readOnly(ctx, dst); err != nil {
		return err
	}
	defer func() { _, _ = dst.Exec(context.WithoutCancel(ctx), "ROLLBACK") }()
	if err := compareCounts(ctx, src, dst); err != nil {
		return err
	}
	if err := compareMatviews(ctx, src, dst); err != nil {
		return err
	}
	return compareSequences(ctx, src, dst)
}

// sameSettings are the settings of Silo's sessions on both sides wherever
// values become text, to be copied or compared: the tenant's own (ALTER
// DATABASE … SET DateStyle, TimeZone) may differ between them, and the
// target's are not the source's.
const sameSettings = "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3; SET bytea_output = hex; SET TimeZone = 'UTC'"

// tableSet selects the tables a copy takes.
type tableSet int

const (
	allTables      tableSet = iota
	loggedTables            // the ones logical replication carries
	unloggedTables          // the ones it does not: copied while the tenant is paused
)

// userTables lists the tenant's tables of a set that hold rows
// (partitions, not their parents), quoted, in an order that loads
// referenced tables before the tables whose foreign keys point at them.
func userTables(ctx context.Context, conn *pgx.Conn, set tableSet) ([]string, error) {
	persistence := map[tableSet]string{allTables: "", loggedTables: "p", unloggedTables: "u"}[set]
	rows, err := conn.Query(ctx, `
		SELECT c.oid::int8, pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'r' AND `+tenantSchemas+` AND ($1 = '' OR c.relpersistence::pg_catalog.text = $1)
		ORDER BY 2`, persistence)
	if err != nil {
		return nil, err
	}
	names, oids, err := namesAndOids(rows)
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
	needs, err := edgesOf(rows)
	if err != nil {
		return nil, err
	}
	// A cycle of foreign keys: its deferrable keys are checked at commit.
	return dependencyOrder(oids, names, needs), nil
}

// namesAndOids collects rows of (oid, name), in order.
func namesAndOids(rows pgx.Rows) (map[int64]string, []int64, error) {
	names := map[int64]string{}
	var oids []int64
	var oid int64
	var name string
	_, err := pgx.ForEachRow(rows, []any{&oid, &name}, func() error {
		names[oid] = name
		oids = append(oids, oid)
		return nil
	})
	return names, oids, err
}

// edgesOf collects rows of (oid, oid it needs).
func edgesOf(rows pgx.Rows) (map[int64][]int64, error) {
	needs := map[int64][]int64{}
	var from, to int64
	_, err := pgx.ForEachRow(rows, []any{&from, &to}, func() error {
		needs[from] = append(needs[from], to)
		return nil
	})
	return needs, err
}

// dependencyOrder returns the names of oids, each after the ones it
// needs (transitively, through objects not among names too), starting
// from oids in their order. A cycle is broken where it is found.
func dependencyOrder(oids []int64, names map[int64]string, needs map[int64][]int64) []string {
	var order []string
	state := map[int64]int{} // 1 visiting, 2 done
	var visit func(oid int64)
	visit = func(oid int64) {
		if state[oid] != 0 {
			return
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
	for _, oid := range oids {
		visit(oid)
	}
	return order
}

// copyData replaces the target's rows with the source's, table by table,
// in one transaction on the target: COPY out of one tenant session into
// the other, in text with the same settings on both sides (binary COPY
// would carry type OIDs that differ between the databases). The source is
// read in one repeatable-read, read-only transaction, at snapshot when one
// is given (a replication slot's, so that the slot's changes follow the
// copy exactly). The tenant's triggers on the target are disabled
// (prepareTarget), so neither the TRUNCATE of an earlier attempt's rows
// nor the rows fire them. set selects the tables. progress, if not nil,
// is told the bytes of COPY text carried so far, as they go.
func copyData(ctx context.Context, src, dst *pgx.Conn, snapshot string, set tableSet, progress func(int64)) error {
	if _, err := src.Exec(ctx, sameSettings); err != nil {
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
	tables, err := userTables(ctx, src, set)
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, dst, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, sameSettings+"; SET CONSTRAINTS ALL DEFERRED"); err != nil {
			return err
		}
		if len(tables) == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, "TRUNCATE "+strings.Join(tables, ", ")+" CASCADE"); err != nil {
			return err
		}
		var copied int64
		for _, table := range tables {
			if err := copyTable(ctx, src, dst, table, &copied, progress); err != nil {
				return fmt.Errorf("table %s: %w", table, err)
			}
		}
		return nil
	})
}

// copyTable streams one table's rows from src to dst, adding the bytes to
// *copied and telling progress.
func copyTable(ctx context.Context, src, dst *pgx.Conn, table string, copied *int64, progress func(int64)) error {
	r, w := io.Pipe()
	out := make(chan error, 1)
	go func() {
		cw := &copyCounter{w: w, n: copied, progress: progress}
		_, err := src.PgConn().CopyTo(ctx, cw, "COPY "+table+" TO STDOUT")
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

// copyCounter counts the bytes written through it into n, and tells
// progress.
type copyCounter struct {
	w        io.Writer
	n        *int64
	progress func(int64)
}

func (c *copyCounter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	*c.n += int64(n)
	if c.progress != nil {
		c.progress(*c.n)
	}
	return n, err
}

// sequenceState is a sequence's state: the value it last gave out (or
// will give next, when not is_called).
type sequenceState struct {
	value    int64
	isCalled bool
}

// sequences reads the state of every sequence of the tenant's, by its
// quoted name, from the sequences themselves (pg_sequences shows no value
// for one that setval(…, false) left).
func sequences(ctx context.Context, conn *pgx.Conn) (map[string]sequenceState, error) {
	rows, err := conn.Query(ctx, `
		SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'S' AND `+tenantSchemas+` ORDER BY 1`)
	if err != nil {
		return nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	out := make(map[string]sequenceState, len(names))
	for _, name := range names {
		var s sequenceState
		// Names quoted by format(%I) above.
		if err := conn.QueryRow(ctx, "SELECT last_value, is_called FROM "+name).Scan(&s.value, &s.isCalled); err != nil {
			return nil, fmt.Errorf("sequence %s: %w", name, err)
		}
		out[name] = s
	}
	return out, nil
}

// copySequences sets every sequence of the target to the source's state:
// logical replication carries rows, not sequences, and the copy's COPY
// calls none.
func copySequences(ctx context.Context, src, dst *pgx.Conn) error {
	seqs, err := sequences(ctx, src)
	if err != nil {
		return err
	}
	for name, s := range seqs {
		if _, err := dst.Exec(ctx, `SELECT pg_catalog.setval($1::pg_catalog.regclass, $2, $3)`, name, s.value, s.isCalled); err != nil {
			return fmt.Errorf("set sequence %s on the target: %w", name, err)
		}
	}
	return nil
}

// compareSequences refuses a cutover when a sequence's state differs
// between the sides.
func compareSequences(ctx context.Context, src, dst *pgx.Conn) error {
	ours, err := sequences(ctx, src)
	if err != nil {
		return err
	}
	theirs, err := sequences(ctx, dst)
	if err != nil {
		return err
	}
	for name, s := range ours {
		t, ok := theirs[name]
		switch {
		case !ok:
			return silo.Errorf(silo.EINTERNAL, "sequence %s is missing on the target: the move is undone", name)
		case t != s:
			return silo.Errorf(silo.EINTERNAL, "sequence %s is at %d (called: %t) on the source and %d (called: %t) on the target: the move is undone",
				name, s.value, s.isCalled, t.value, t.isCalled)
		}
	}
	return nil
}

// compareCounts refuses a cutover when any table has another number of rows
// on the target than on the source. Both sides count at once.
func compareCounts(ctx context.Context, src, dst *pgx.Conn) error {
	rows, err := src.Query(ctx, `
		SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND `+tenantSchemas+`
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
			if err := conn.QueryRow(ctx, "SELECT pg_catalog.count(*) FROM "+table).Scan(&out[i]); err != nil {
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
		// record_out, never ::text: a tenant may CREATE CAST from its
		// table's row type to text, with a function of its own.
		q := "SELECT coalesce(pg_catalog.md5(pg_catalog.string_agg(pg_catalog.record_out(t)::pg_catalog.text, E'\\n' ORDER BY pg_catalog.record_out(t)::pg_catalog.text COLLATE \"C\")), '') FROM " + table + " t"
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

// matviewStates maps each of the tenant's materialized views (its quoted
// name) to whether it is populated.
func matviewStates(ctx context.Context, conn *pgx.Conn) (map[string]bool, error) {
	rows, err := conn.Query(ctx, `
		SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.relispopulated FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'm' AND `+tenantSchemas)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	var name string
	var populated bool
	_, err = pgx.ForEachRow(rows, []any{&name, &populated}, func() error {
		out[name] = populated
		return nil
	})
	return out, err
}

// refreshMatviews populates, as the tenant on the target, each
// materialized view that is populated on the source, each after the ones
// its query reads (through views too), and returns how many. The copy of
// the schema leaves every one unpopulated (pg_dump --schema-only writes
// them WITH NO DATA), and any query on such a view fails (55000). Neither
// replication nor COPY can write one: it holds what its query returns on
// the moved rows, as of the cutover. One left unpopulated on the source
// (WITH NO DATA) stays so. The refresh runs with the session's own
// settings, not the copy's (sameSettings): a view's query may turn values
// into text.
func refreshMatviews(ctx context.Context, src, dst *pgx.Conn) (int, error) {
	want, err := matviewStates(ctx, src)
	if err != nil {
		return 0, err
	}
	if _, err := dst.Exec(ctx, "RESET ALL"); err != nil {
		return 0, err
	}
	rows, err := dst.Query(ctx, `
		SELECT c.oid::int8, pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'm' AND `+tenantSchemas+` ORDER BY 2`)
	if err != nil {
		return 0, err
	}
	names, oids, err := namesAndOids(rows)
	if err != nil || len(oids) == 0 {
		return 0, err
	}
	// What each view's and materialized view's query reads: its rewrite
	// rule's dependencies.
	rows, err = dst.Query(ctx, `
		SELECT DISTINCT w.ev_class::int8, d.refobjid::int8 FROM pg_catalog.pg_rewrite w
		JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = w.oid
		     AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> w.ev_class
		JOIN pg_catalog.pg_class r ON r.oid = d.refobjid AND r.relkind IN ('m', 'v')`)
	if err != nil {
		return 0, err
	}
	needs, err := edgesOf(rows)
	if err != nil {
		return 0, err
	}
	refreshed := 0
	for _, name := range dependencyOrder(oids, names, needs) {
		if !want[name] {
			continue
		}
		// Names quoted by format(%I) above.
		if _, err := dst.Exec(ctx, "REFRESH MATERIALIZED VIEW "+name); err != nil {
			return refreshed, fmt.Errorf("materialized view %s: %w", name, err)
		}
		refreshed++
	}
	return refreshed, nil
}

// compareMatviews refuses a cutover when a materialized view is populated
// on one side and not on the other.
func compareMatviews(ctx context.Context, src, dst *pgx.Conn) error {
	ours, err := matviewStates(ctx, src)
	if err != nil {
		return err
	}
	theirs, err := matviewStates(ctx, dst)
	if err != nil {
		return err
	}
	for name, populated := range ours {
		if t, ok := theirs[name]; !ok || t != populated {
			return silo.Errorf(silo.EINTERNAL, "materialized view %s is %s on the source and not on the target: the move is undone",
				name, map[bool]string{true: "populated", false: "unpopulated"}[populated])
		}
	}
	return nil
}
