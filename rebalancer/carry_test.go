package rebalancer

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

// carrySchema is a schema of the kinds a third-party application brings:
// a partitioned table, a table without a primary key, an unlogged table,
// sequences, views and materialized views, one of which reads another
// through a view (and sorts before it by name). Its materialized views are
// made WITH NO DATA, as pg_dump --schema-only writes them.
const carrySchema = `
	CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, at date NOT NULL, kind text NOT NULL,
		PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
	CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
	CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
	CREATE TABLE loose (k int NOT NULL, v text);
	CREATE TABLE nothing (k int PRIMARY KEY, v text);
	ALTER TABLE nothing REPLICA IDENTITY NOTHING;
	CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY, note text);
	CREATE TABLE stamps (id int PRIMARY KEY, at timestamptz NOT NULL, day date NOT NULL);
	CREATE SEQUENCE counter;
	CREATE SEQUENCE held;
	CREATE SEQUENCE unused;
	CREATE MATERIALIZED VIEW z_totals AS SELECT kind, count(*) AS n FROM events GROUP BY kind WITH NO DATA;
	CREATE VIEW busy AS SELECT kind FROM z_totals WHERE n > 1;
	CREATE MATERIALIZED VIEW a_summary AS SELECT count(*) AS kinds FROM busy WITH NO DATA;
	CREATE MATERIALIZED VIEW later AS SELECT count(*) AS n FROM loose WITH NO DATA`

// carryData fills carrySchema on the source: rows in every table, the
// sequences advanced (one left as setval(…, false) leaves it, one never
// used), and two of the three materialized views populated.
const carryData = `
	INSERT INTO events (at, kind) SELECT date '2025-06-01' + (g % 400), 'k' || (g % 7) FROM generate_series(1, 3000) g;
	INSERT INTO loose SELECT g, 'v0' FROM generate_series(1, 300) g;
	INSERT INTO nothing SELECT g, 'v0' FROM generate_series(1, 50) g;
	INSERT INTO scratch SELECT g, 'n' || g FROM generate_series(1, 500) g;
	INSERT INTO stamps SELECT g, timestamptz '2026-01-01 00:00+00' + g * interval '1 hour', date '2026-01-01' + g FROM generate_series(1, 100) g;
	SELECT count(nextval('counter')) FROM generate_series(1, 42);
	SELECT setval('held', 500, false);
	REFRESH MATERIALIZED VIEW z_totals;
	REFRESH MATERIALIZED VIEW a_summary`

// A tenant with a third-party kind of schema moves, live and by the paused
// copy, while it updates and deletes rows of its table without a primary
// key, inserts into its partitioned and unlogged tables: no write fails,
// every change is on the target, the materialized views populated on the
// source are populated there (the one made WITH NO DATA stays so), the
// sequences are where the source left them, the tables' replica
// identities are their own, and nothing of the move's is left.
func TestMoveCarriesEverything(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"live", "dump"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			pgDump := pgDumpIfAny(t)
			r, b := setup(t, provisioner.Config{PgDump: pgDump})
			from := "a"
			if path == "dump" {
				b.ownShard(t, "r", map[string]string{"wal_level": "replica"})
				from = "r"
			}
			tn := b.create(t, "carry-"+path, from)
			_, err := b.asTenant(t, tn).Exec(b.ctx, carrySchema+";"+carryData)
			require.NoError(t, err)
			// The tenant's own settings for every session on its database,
			// which the target's has not: the rows compare all the same.
			db := pgx.Identifier{tn.Database}.Sanitize()
			_, err = b.asTenant(t, tn).Exec(b.ctx, "ALTER DATABASE "+db+" SET TimeZone = 'Asia/Tokyo'; ALTER DATABASE "+db+" SET DateStyle = 'German'")
			require.NoError(t, err)

			rt, err := router.New(router.Config{Catalog: b.pool, Store: b.store, SecretKey: testKey})
			require.NoError(t, err)
			require.NoError(t, rt.Start(b.ctx))
			t.Cleanup(rt.Stop)
			w := startLooseWriter(t, b, rt, tn.ID)

			var op *silo.Operation
			if pgDump != "" {
				res, err := r.Move(b.ctx, MoveRequest{ID: tn.ID, Shard: "b"}, time.Minute)
				require.NoError(t, err)
				op = res.Operation
			} else {
				opID := startMove(t, r, b, tn, from, "copy-schema", func() {
					b.migrateTarget(t, tn, "b")
					conn, err := b.dialer.ConnectTenant(b.ctx, tn, "b")
					require.NoError(t, err)
					defer conn.Close(b.ctx)
					_, err = conn.Exec(b.ctx, carrySchema)
					require.NoError(t, err)
				})
				op, err = b.eng.RunNow(b.ctx, opID)
				require.NoError(t, err)
			}
			require.Equal(t, silo.OpSucceeded, op.State, "%+v", op.Steps)
			require.Equal(t, path, op.Move.Path, op.Move.PathReason)
			time.Sleep(200 * time.Millisecond) // writes on the target too
			acked := w.stop(t)
			require.Positive(t, acked, "the writer wrote during the move")

			moved := b.tenant(t, tn.ID)
			require.Equal(t, "b", moved.Shard)
			on := b.asTenant(t, moved)
			require.Equal(t, w.want(), looseRows(t, b.ctx, on), "every update and delete of the table without a primary key")
			var events, scratch, nothing int
			require.NoError(t, on.QueryRow(b.ctx, `SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM scratch),
				(SELECT count(*) FROM nothing)`).Scan(&events, &scratch, &nothing))
			require.Equal(t, 3000+acked, events, "the partitioned table's rows")
			require.Equal(t, 500+acked, scratch, "the unlogged table's rows, written during the move too")
			require.Equal(t, 50, nothing)

			populated := map[string]bool{}
			rows, err := on.Query(b.ctx, `SELECT matviewname::text, ispopulated FROM pg_matviews`)
			require.NoError(t, err)
			var name string
			var p bool
			_, err = pgx.ForEachRow(rows, []any{&name, &p}, func() error { populated[name] = p; return nil })
			require.NoError(t, err)
			require.Equal(t, map[string]bool{"z_totals": true, "a_summary": true, "later": false}, populated)
			var kinds, k1 int
			require.NoError(t, on.QueryRow(b.ctx, `SELECT (SELECT kinds FROM a_summary), (SELECT n FROM z_totals WHERE kind = 'k1')`).Scan(&kinds, &k1))
			require.Equal(t, 8, kinds, "k0 to k6 and the writer's w")
			require.Positive(t, k1)
			_, err = on.Exec(b.ctx, `SELECT * FROM later`)
			require.Error(t, err, "made WITH NO DATA on the source, it stays unpopulated")
			require.Equal(t, "55000", shardmap.SQLState(err))

			var counter, held, unused, event int64
			require.NoError(t, on.QueryRow(b.ctx, `SELECT nextval('counter'), nextval('held'), nextval('unused')`).Scan(&counter, &held, &unused))
			require.Equal(t, []int64{43, 500, 1}, []int64{counter, held, unused}, "the sequences as the source left them")
			require.NoError(t, on.QueryRow(b.ctx, `INSERT INTO events (at, kind) VALUES ('2026-05-01', 'after') RETURNING id`).Scan(&event))
			require.Greater(t, event, int64(3000+acked), "the identity column's sequence followed")

			identities := map[string]string{}
			rows, err = on.Query(b.ctx, `SELECT relname::text, relreplident::text FROM pg_class WHERE relname IN ('loose', 'nothing')`)
			require.NoError(t, err)
			var ident string
			_, err = pgx.ForEachRow(rows, []any{&name, &ident}, func() error { identities[name] = ident; return nil })
			require.NoError(t, err)
			require.Equal(t, map[string]string{"loose": "d", "nothing": "n"}, identities, "the tables' own replica identities")
			_, err = on.Exec(b.ctx, `UPDATE loose SET v = 'after' WHERE k = 1; DELETE FROM nothing WHERE k = 1`)
			require.NoError(t, err, "nothing is published on the target")

			var fences int
			require.NoError(t, b.asAdmin(t, "b", moved.Database).QueryRow(b.ctx,
				`SELECT count(*) FROM pg_namespace WHERE nspname = 'silo_move'`).Scan(&fences))
			require.Zero(t, fences, "the fence is gone from the target")
			b.requireNoReplication(t, from, "b", moved.Database)
		})
	}
}

// looseWriter updates and deletes rows of loose, and inserts into events
// and scratch, through the router, one transaction at a time, and keeps
// what loose holds once its acknowledged transactions are applied.
type looseWriter struct {
	mu    sync.Mutex
	rows  map[int]string
	acked int
	errs  []error
	halt  chan struct{}
	done  chan struct{}
}

func startLooseWriter(t *testing.T, b *bundle, rt *router.Router, id string) *looseWriter {
	t.Helper()
	w := &looseWriter{rows: map[int]string{}, halt: make(chan struct{}), done: make(chan struct{})}
	for k := 1; k <= 300; k++ {
		w.rows[k] = "v0"
	}
	go func() {
		defer close(w.done)
		for i := 1; ; i++ {
			select {
			case <-w.halt:
				return
			default:
			}
			update, del := i%250+1, 300-i%250 // the deleted keys go down as the updated ones go up
			sql := fmt.Sprintf(`UPDATE loose SET v = 'v%d' WHERE k = %d; DELETE FROM loose WHERE k = %d;
				INSERT INTO scratch (id, note) VALUES (%d, 'w'); INSERT INTO events (at, kind) VALUES ('2026-03-01', 'w')`,
				i, update, del, 100000+i)
			ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
			err := rt.WithTenant(ctx, id, func(c *pgx.Conn) error {
				_, err := c.Exec(ctx, sql) // one implicit transaction
				return err
			})
			cancel()
			w.mu.Lock()
			if err != nil {
				w.errs = append(w.errs, err)
			} else {
				w.acked++
				if _, ok := w.rows[update]; ok {
					w.rows[update] = fmt.Sprintf("v%d", i)
				}
				delete(w.rows, del)
			}
			w.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	t.Cleanup(func() {
		select {
		case <-w.done:
		default:
			close(w.halt)
			<-w.done
		}
	})
	return w
}

// stop stops the writer, requires that none of its writes failed, and
// returns how many were acknowledged.
func (w *looseWriter) stop(t *testing.T) int {
	t.Helper()
	close(w.halt)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	require.Zero(t, len(w.errs), "the tenant's writes failed: %v", w.errs[:min(3, len(w.errs))])
	return w.acked
}

func (w *looseWriter) want() map[int]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[int]string{}
	for k, v := range w.rows {
		out[k] = v
	}
	return out
}

func looseRows(t *testing.T, ctx context.Context, conn *pgx.Conn) map[int]string {
	t.Helper()
	rows, err := conn.Query(ctx, `SELECT k, v FROM loose`)
	require.NoError(t, err)
	out := map[int]string{}
	var k int
	var v string
	_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error {
		_, dup := out[k]
		require.False(t, dup, "key %d twice", k)
		out[k] = v
		return nil
	})
	require.NoError(t, err)
	return out
}

// A tenant with large objects, which no move carries, is refused before
// anything is made on the target, the large objects named; one made once
// its move has begun makes the cutover refuse, and the move is undone,
// the tenant working on its source with nothing of the move left.
func TestMoveRefusesLargeObjects(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{})
	tn := b.create(t, "lo", "a")
	conn := b.asTenant(t, tn)
	var oid uint32
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT lo_from_bytea(0, 'a scan')`).Scan(&oid))

	_, err := r.Move(b.ctx, MoveRequest{ID: tn.ID, Shard: "b"}, time.Minute)
	requireCode(t, err, silo.ECONFLICT)
	require.Contains(t, silo.ErrorMessage(err), "1 large object (OID ")
	require.Contains(t, silo.ErrorMessage(err), fmt.Sprint(oid))
	db, role := b.shardHas(t, "b", tn.Database)
	require.False(t, db || role, "nothing made on the target")
	require.Equal(t, "a", b.tenant(t, tn.ID).Shard)

	// Made once the move has begun: the cutover's pause finds it.
	_, err = conn.Exec(b.ctx, `SELECT lo_unlink($1)`, oid)
	require.NoError(t, err)
	opID := startMove(t, r, b, tn, "a", "initial-copy", func() { b.migrateTarget(t, tn, "b") })
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT lo_from_bytea(0, 'made during the move')`).Scan(&oid))
	op, err := b.eng.RunNow(b.ctx, opID)
	require.NoError(t, err)
	require.Equal(t, silo.OpFailed, op.State, "%+v", op.Steps)
	require.Equal(t, silo.ECONFLICT, op.ErrorCode)
	require.Contains(t, op.Error, fmt.Sprint(oid))
	back := b.tenant(t, tn.ID)
	require.Equal(t, "a", back.Shard)
	require.Equal(t, silo.TenantActive, back.State)
	var data []byte
	require.NoError(t, b.asTenant(t, back).QueryRow(b.ctx, `SELECT lo_get($1)`, oid).Scan(&data), "the tenant works on its source")
	require.Equal(t, "made during the move", string(data))
	db, role = b.shardHas(t, "b", tn.Database)
	require.False(t, db || role, "the target is clean")
	b.requireNoReplication(t, "a", "b", tn.Database)
}

// While a live move replicates, the tenant's tables without a replica
// identity have REPLICA IDENTITY FULL on the source, set by the tenant's
// own role and recorded in the operation, so the tenant's UPDATEs and
// DELETEs work; the fence is the admin's, out of the tenant's reach. The
// undo sets the identities back and removes the fence.
func TestMoveUndoRestoresIdentities(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{})
	tn := b.create(t, "identity", "a")
	conn := b.asTenant(t, tn)
	_, err := conn.Exec(b.ctx, carrySchema+";"+carryData)
	require.NoError(t, err)
	before := replicaIdentities(t, b.ctx, conn)
	require.Equal(t, "d", before["loose"])
	require.Equal(t, "n", before["nothing"])

	opID := startMove(t, r, b, tn, "a", "initial-copy", func() {
		b.migrateTarget(t, tn, "b")
		c, err := b.dialer.ConnectTenant(b.ctx, tn, "b")
		require.NoError(t, err)
		defer c.Close(b.ctx)
		_, err = c.Exec(b.ctx, carrySchema)
		require.NoError(t, err)
	})
	during := replicaIdentities(t, b.ctx, conn)
	require.Equal(t, "f", during["loose"])
	require.Equal(t, "f", during["nothing"])
	require.Equal(t, before["events_2025"], during["events_2025"], "a table with a primary key keeps its identity")
	_, err = conn.Exec(b.ctx, `UPDATE loose SET v = 'during' WHERE k = 1; DELETE FROM loose WHERE k = 2; UPDATE nothing SET v = 'during' WHERE k = 1`)
	require.NoError(t, err, "published, the tables take the tenant's updates and deletes")
	params, err := b.store.OperationParams(b.ctx, opID)
	require.NoError(t, err)
	require.ElementsMatch(t, []any{
		map[string]any{"table": "public.loose", "identity": "d"},
		map[string]any{"table": "public.nothing", "identity": "n"},
	}, params["identities"])
	for _, shard := range []string{"a", "b"} {
		var owner string
		require.NoError(t, b.asAdmin(t, shard, tn.Database).QueryRow(b.ctx,
			`SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'silo_move'`).Scan(&owner), shard)
		require.NotEqual(t, tn.Database, owner, "the fence is not the tenant's on %s", shard)
	}
	_, err = conn.Exec(b.ctx, `SELECT * FROM silo_move.fence`)
	require.Error(t, err)
	require.Equal(t, "42501", shardmap.SQLState(err), "the tenant cannot read the fence")
	_, err = conn.Exec(b.ctx, `DROP SCHEMA silo_move CASCADE`)
	require.Error(t, err, "nor drop it")

	ctx := engine.WithOperation(b.ctx, opID)
	for _, s := range plan(t, r, b, opID).Undo {
		require.NoError(t, s.Run(ctx), s.Name)
	}
	conn = b.asTenant(t, b.tenant(t, tn.ID))
	require.Equal(t, before, replicaIdentities(t, b.ctx, conn), "every table's identity as the tenant had it")
	db, role := b.shardHas(t, "b", tn.Database)
	require.False(t, db || role)
	b.requireNoReplication(t, "a", "b", tn.Database)
}

func replicaIdentities(t *testing.T, ctx context.Context, conn *pgx.Conn) map[string]string {
	t.Helper()
	rows, err := conn.Query(ctx, `SELECT c.relname::text, c.relreplident::text FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'`)
	require.NoError(t, err)
	out := map[string]string{}
	var name, ident string
	_, err = pgx.ForEachRow(rows, []any{&name, &ident}, func() error { out[name] = ident; return nil })
	require.NoError(t, err)
	return out
}

// requireNoReplication checks that nothing of a move's replication is
// left: no slot or publication on the source, no subscription or
// subscription role on the target, and no fence on the source (the
// tenant's database there, or its retired copy).
func (b *bundle) requireNoReplication(t *testing.T, from, to, name string) {
	t.Helper()
	src := b.asAdmin(t, from, "")
	var slots int
	require.NoError(t, src.QueryRow(b.ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, "silo_move_"+name).Scan(&slots))
	require.Zero(t, slots, "no slot left on the source")
	var dbs []string
	rows, err := src.Query(b.ctx, `SELECT datname::text FROM pg_database WHERE datname = $1 OR datname LIKE 'silo\_moved\_%\_' || $1`, name)
	require.NoError(t, err)
	dbs, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.NotEmpty(t, dbs, "the tenant's database, or its retired copy, is on the source")
	for _, db := range dbs {
		var fences, pubs int
		require.NoError(t, b.asAdmin(t, from, db).QueryRow(b.ctx, `SELECT
			(SELECT count(*) FROM pg_namespace WHERE nspname = 'silo_move'), (SELECT count(*) FROM pg_publication)`).Scan(&fences, &pubs))
		require.Zero(t, fences, "no fence left in %s on the source", db)
		require.Zero(t, pubs, "no publication left in %s on the source", db)
	}
	dst := b.asAdmin(t, to, "")
	var subs, roles int
	require.NoError(t, dst.QueryRow(b.ctx, `SELECT (SELECT count(*) FROM pg_subscription WHERE subslotname = $1),
		(SELECT count(*) FROM pg_roles WHERE rolname = $2)`, "silo_move_"+name, "silo_sub_"+name).Scan(&subs, &roles))
	require.Zero(t, subs+roles, "no subscription or subscription role left on the target")
}

// pgDumpIfAny returns the pg_dump beside the PostgreSQL server binaries,
// or "" (the PostgreSQL 16+ packages of the npm registry ship none): the
// test then makes the target's schema itself.
func pgDumpIfAny(t *testing.T) string {
	t.Helper()
	binDir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	path := filepath.Join(binDir, "pg_dump")
	if _, err := os.Stat(path); err != nil {
		return ""
	}
	return path
}
