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

// compareReadOnly compares the rows of both sides (compareCounts), the
// target's in a read-only transaction too.
func compareReadOnly(ctx context.Context, src, dst *pgx.Conn) error {
	if err := readOnly(ctx, dst); err != nil {
		return err
	}
	defer func() { _, _ = dst.Exec(context.WithoutCancel(ctx), "ROLLBACK") }()
	return compareCounts(ctx, src, dst)
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

// copySequences sets every sequence of the target to the source's value:
// logical replication carries rows, not sequences.
func copySequences(ctx context.Context, src, dst *pgx.Conn) error {
	rows, err := src.Query(ctx, `
		SELECT pg_catalog.format('%I.%I', schemaname, sequencename), last_value FROM pg_catalog.pg_sequences
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
		if _, err := dst.Exec(ctx, `SELECT pg_catalog.setval($1::pg_catalog.regclass, $2, true)`, s.name, s.value); err != nil {
			return fmt.Errorf("set sequence %s on the target: %w", s.name, err)
		}
	}
	return nil
}

// compareCounts refuses a cutover when any table has another number of rows
// on the target than on the source. Both sides count at once.
func compareCounts(ctx context.Context, src, dst *pgx.Conn) error {
	rows, err := src.Query(ctx, `
		SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
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
