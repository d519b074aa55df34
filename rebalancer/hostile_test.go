package rebalancer

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/internal/hostile"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/shardmap"
)

// plantTriggers gives the tenant's notes table a trigger of every state
// that fires in a replication apply or a restore (ALWAYS, REPLICA) or on a
// TRUNCATE, each trying to escalate, plus one it disabled itself, and
// returns their states as the tenant set them.
func plantTriggers(t *testing.T, ctx context.Context, conn *pgx.Conn) map[string]string {
	t.Helper()
	_, err := conn.Exec(ctx, `
		CREATE TRIGGER hostile_always AFTER INSERT OR UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION public.hostile_trigger();
		ALTER TABLE notes ENABLE ALWAYS TRIGGER hostile_always;
		CREATE TRIGGER hostile_replica BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION public.hostile_trigger();
		ALTER TABLE notes ENABLE REPLICA TRIGGER hostile_replica;
		CREATE TRIGGER hostile_truncate BEFORE TRUNCATE ON notes FOR EACH STATEMENT EXECUTE FUNCTION public.hostile_trigger();
		ALTER TABLE notes ENABLE ALWAYS TRIGGER hostile_truncate;
		CREATE TRIGGER hostile_off AFTER DELETE ON notes FOR EACH ROW EXECUTE FUNCTION public.hostile_trigger();
		ALTER TABLE notes DISABLE TRIGGER hostile_off;
		CREATE TRIGGER hostile_origin AFTER DELETE ON notes FOR EACH ROW EXECUTE FUNCTION public.hostile_trigger()`)
	require.NoError(t, err)
	return triggerStates(t, ctx, conn)
}

func triggerStates(t *testing.T, ctx context.Context, conn *pgx.Conn) map[string]string {
	t.Helper()
	rows, err := conn.Query(ctx, `SELECT tgname, tgenabled::text FROM pg_trigger WHERE NOT tgisinternal`)
	require.NoError(t, err)
	out := map[string]string{}
	for rows.Next() {
		var name, state string
		require.NoError(t, rows.Scan(&name, &state))
		out[name] = state
	}
	require.NoError(t, rows.Err())
	return out
}

// A tenant's triggers that fire in a subscription's apply (ENABLE ALWAYS,
// ENABLE REPLICA), and a search_path it set on its database for every
// session there, try to escalate during a live move. The move carries the
// tenant's rows, the tenant gains nothing on either shard, and its
// triggers come back on the target in exactly the states it gave them.
func TestHostileMoveLive(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{PgDump: requirePgDump(t)})
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("hostile-live"), Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	tn := res.Tenant
	conn := b.asTenant(t, tn)
	require.NoError(t, hostile.Install(b.ctx, conn, tn.Database))
	want := plantTriggers(t, b.ctx, conn)
	_, err = conn.Exec(b.ctx, `
		CREATE SCHEMA hostile;
		CREATE FUNCTION hostile.lower(text) RETURNS text LANGUAGE plpgsql AS $f$
		BEGIN PERFORM public.hostile_escalate(); RETURN $1; END $f$;
		ALTER DATABASE `+pgx.Identifier{tn.Database}.Sanitize()+` SET search_path = hostile, pg_catalog, public;
		DROP TABLE public.hostile_log;
		INSERT INTO notes (title) SELECT 'n-' || g FROM generate_series(1, 500) g`)
	require.NoError(t, err)
	// Every new session on the database gets the tenant's search_path,
	// but Silo's admin sessions pin their own.
	plain, err := pgx.Connect(b.ctx, b.shardDSN("a", tn.Database))
	require.NoError(t, err)
	var path string
	require.NoError(t, plain.QueryRow(b.ctx, `SHOW search_path`).Scan(&path))
	plain.Close(b.ctx)
	require.Equal(t, "hostile, pg_catalog, public", path, "the control: a session as the admin without the dialer")
	admin, err := b.dialer.ConnectAdmin(b.ctx, "a", tn.Database)
	require.NoError(t, err)
	require.NoError(t, admin.QueryRow(b.ctx, `SHOW search_path`).Scan(&path))
	admin.Close(b.ctx)
	require.Equal(t, "pg_catalog, pg_temp", path)

	res, err = r.Move(b.ctx, MoveRequest{ID: tn.ID, Shard: "b"}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, res.Operation.State, "%+v", res.Operation.Steps)
	require.NotNil(t, res.Operation.Move)
	require.Equal(t, "live", res.Operation.Move.Path, res.Operation.Move.PathReason)
	require.Positive(t, res.Operation.Move.PauseMs)
	b.requireNotSuper(t, tn.Database, "a", "b")

	moved, err := b.store.GetTenant(b.ctx, tn.ID)
	require.NoError(t, err)
	on := b.asTenant(t, moved)
	require.Equal(t, want, triggerStates(t, b.ctx, on), "the triggers as the tenant left them")
	var n int
	require.NoError(t, on.QueryRow(b.ctx, `SELECT count(*) FROM notes`).Scan(&n))
	require.Equal(t, 500, n)
}

// On PostgreSQL 15 a subscription's apply runs as a superuser, and it
// evaluates index expressions, CHECK constraints and column defaults of
// the target: a schema whose expressions call the tenant's functions is
// moved by the paused copy, as the tenant, and the move says so. On 16 and
// later the apply runs as the tenant, and the move stays live.
func TestHostileMoveExpressions(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{PgDump: requirePgDump(t)})
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("hostile-expr"), Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	tn := res.Tenant
	conn := b.asTenant(t, tn)
	require.NoError(t, hostile.Install(b.ctx, conn, tn.Database))
	_, err = conn.Exec(b.ctx, `
		DROP TABLE public.hostile_log;
		CREATE TABLE guarded (id int PRIMARY KEY CHECK (public.hostile_true(id)), note text);
		CREATE INDEX guarded_expr ON guarded ((public.hostile_true(id)));
		CREATE FUNCTION public.hostile_note() RETURNS text LANGUAGE plpgsql AS $f$
		BEGIN PERFORM public.hostile_escalate(); RETURN 'x'; END $f$;
		ALTER TABLE guarded ALTER COLUMN note SET DEFAULT public.hostile_note();
		INSERT INTO guarded (id) SELECT g FROM generate_series(1, 300) g`)
	require.NoError(t, err)

	res, err = r.Move(b.ctx, MoveRequest{ID: tn.ID, Shard: "b"}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, res.Operation.State, "%+v", res.Operation.Steps)
	if b.major(t, "b") < 16 {
		require.Equal(t, "dump", res.Operation.Move.Path)
		require.Contains(t, res.Operation.Move.PathReason, "hostile_true")
		require.Contains(t, res.Operation.Move.PathReason, "superuser")
	} else {
		require.Equal(t, "live", res.Operation.Move.Path)
	}
	b.requireNotSuper(t, tn.Database, "a", "b")
	moved, err := b.store.GetTenant(b.ctx, tn.ID)
	require.NoError(t, err)
	var n int
	require.NoError(t, b.asTenant(t, moved).QueryRow(b.ctx, `SELECT count(*) FROM guarded`).Scan(&n))
	require.Equal(t, 300, n)
}

// The paused copy of a source without logical replication runs as the
// tenant on both sides: its TRUNCATE and row triggers, checks and index
// expressions gain it nothing, and its triggers come back as it left them.
func TestHostileMoveDump(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{PgDump: requirePgDump(t)})
	b.ownShard(t, "r", map[string]string{"wal_level": "replica"})
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("hostile-dump"), Shard: "r"}, 30*time.Second)
	require.NoError(t, err)
	tn := res.Tenant
	conn := b.asTenant(t, tn)
	require.NoError(t, hostile.Install(b.ctx, conn, tn.Database))
	want := plantTriggers(t, b.ctx, conn)
	_, err = conn.Exec(b.ctx, `
		DROP TABLE public.hostile_log;
		CREATE TABLE parent (id int PRIMARY KEY);
		CREATE TABLE child (id int PRIMARY KEY, parent int NOT NULL REFERENCES parent, CHECK (public.hostile_true(id)));
		CREATE INDEX child_expr ON child ((public.hostile_true(parent)));
		INSERT INTO parent SELECT g FROM generate_series(1, 100) g;
		INSERT INTO child SELECT g, 1 + g % 100 FROM generate_series(1, 1000) g;
		INSERT INTO notes (title) SELECT 'n-' || g FROM generate_series(1, 200) g`)
	require.NoError(t, err)

	res, err = r.Move(b.ctx, MoveRequest{ID: tn.ID, Shard: "a"}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, res.Operation.State, "%+v", res.Operation.Steps)
	require.Equal(t, "dump", res.Operation.Move.Path)
	require.Contains(t, res.Operation.Move.PathReason, "wal_level")
	b.requireNotSuper(t, tn.Database, "a", "r")
	moved, err := b.store.GetTenant(b.ctx, tn.ID)
	require.NoError(t, err)
	on := b.asTenant(t, moved)
	require.Equal(t, want, triggerStates(t, b.ctx, on))
	var children, notes int
	require.NoError(t, on.QueryRow(b.ctx, `SELECT (SELECT count(*) FROM child), (SELECT count(*) FROM notes)`).Scan(&children, &notes))
	require.Equal(t, 1000, children)
	require.Equal(t, 200, notes)
}

// The move's own machinery on every major, with a schema the test makes on
// the target: on PostgreSQL 16 and later the subscription belongs to the
// tenant's role and applies as it (run_as_owner = false), on 15 to a
// superuser with the tenant's triggers disabled; the paused copy runs as
// the tenant on both sides. Either way, the tenant's ALWAYS and REPLICA
// triggers gain it nothing, and come back as it left them.
func TestHostileMoveAsTenant(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"live", "dump"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			r, b := setup(t, provisioner.Config{}) // no pg_dump: the test makes the schema
			from := "a"
			if path == "dump" {
				b.ownShard(t, "r", map[string]string{"wal_level": "replica"})
				from = "r"
			}
			res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("as-tenant-" + path), Shard: from}, 30*time.Second)
			require.NoError(t, err)
			tn := res.Tenant
			plant := func(conn *pgx.Conn) map[string]string {
				require.NoError(t, hostile.Install(b.ctx, conn, tn.Database))
				states := plantTriggers(t, b.ctx, conn)
				_, err := conn.Exec(b.ctx, `DROP TABLE public.hostile_log`)
				require.NoError(t, err)
				return states
			}
			want := plant(b.asTenant(t, tn))
			_, err = b.asTenant(t, tn).Exec(b.ctx, `INSERT INTO notes (title) SELECT 'n-' || g FROM generate_series(1, 400) g`)
			require.NoError(t, err)

			opID := uuid.NewString()
			params := map[string]any{"operation": opID, "from": from, "to": "b"}
			require.NoError(t, b.store.Mutate(b.ctx, "tenant.move", "tenant/"+tn.ID, params, func(tx pgx.Tx) error {
				return b.eng.Insert(b.ctx, tx, shardmap.NewOperation{ID: opID, Kind: silo.OpMove, TenantID: tn.ID, Params: params})
			}))
			stepsUpTo(t, r, b, opID, "replicate", func() {
				b.migrateTarget(t, tn, "b")
				conn, err := b.dialer.ConnectTenant(b.ctx, tn, "b")
				require.NoError(t, err)
				defer conn.Close(b.ctx)
				plant(conn)
			})
			if path == "live" {
				admin, err := b.dialer.ConnectAdmin(b.ctx, "b", tn.Database)
				require.NoError(t, err)
				var owner string
				var super bool
				require.NoError(t, admin.QueryRow(b.ctx, `SELECT s.subowner::regrole::text, r.rolsuper FROM pg_subscription s
					JOIN pg_roles r ON r.oid = s.subowner WHERE s.subname = $1`, "silo_move_"+tn.Database).Scan(&owner, &super))
				admin.Close(b.ctx)
				if b.major(t, "b") >= 16 {
					require.Equal(t, "silo_sub_"+tn.Database, owner, "a role of the move's own owns the subscription")
					require.False(t, super)
					// Not the tenant's to alter, from its own session or its
					// code in the apply.
					tc, err := b.dialer.ConnectTenant(b.ctx, tn, "b")
					require.NoError(t, err)
					_, err = tc.Exec(b.ctx, "ALTER SUBSCRIPTION "+pgx.Identifier{"silo_move_" + tn.Database}.Sanitize()+" RENAME TO mine")
					tc.Close(b.ctx)
					require.Error(t, err)
				} else {
					require.True(t, super, "only a superuser may own a subscription on 15")
				}
			}
			done, err := b.eng.RunNow(b.ctx, opID)
			require.NoError(t, err)
			require.Equal(t, silo.OpSucceeded, done.State, "%+v", done.Steps)
			require.Equal(t, path, done.Move.Path, done.Move.PathReason)
			b.requireNotSuper(t, tn.Database, from, "b")
			moved, err := b.store.GetTenant(b.ctx, tn.ID)
			require.NoError(t, err)
			require.Equal(t, "b", moved.Shard)
			on := b.asTenant(t, moved)
			require.Equal(t, want, triggerStates(t, b.ctx, on))
			var n int
			require.NoError(t, on.QueryRow(b.ctx, `SELECT count(*) FROM notes`).Scan(&n))
			require.Equal(t, 400, n)
			if b.major(t, "b") >= 16 {
				admin, err := b.dialer.ConnectAdmin(b.ctx, "b", "")
				require.NoError(t, err)
				defer admin.Close(b.ctx)
				var member, ownerLeft bool
				require.NoError(t, admin.QueryRow(b.ctx, `SELECT pg_has_role($1, 'pg_create_subscription', 'MEMBER'),
					EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2)`, tn.Database, "silo_sub_"+tn.Database).Scan(&member, &ownerLeft))
				require.False(t, member, "the tenant may create no subscription")
				require.False(t, ownerLeft, "the subscription's role is gone with it")
			}
		})
	}
}

// A subscription's own first copy reads each table on the source over its
// connection, the source admin's: a tenant that swaps a published table
// for a view once the move has begun would have the view's functions run
// as that admin. Silo copies the rows itself, as the tenant (COPY of a
// view is refused, never run), so the view runs in no session of Silo's
// but the tenant's own, and the tenant gains nothing; the move goes on
// without the table, or is undone.
func TestHostileMoveSwapsTableForView(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{})
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("swap"), Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	tn := res.Tenant
	conn := b.asTenant(t, tn)
	require.NoError(t, hostile.Install(b.ctx, conn, tn.Database))
	_, err = conn.Exec(b.ctx, `CREATE TABLE zzz (id int, who text)`)
	require.NoError(t, err)
	opID := startMove(t, r, b, tn, "a", "prepare-target", func() {
		b.migrateTarget(t, tn, "b")
		conn, err := b.dialer.ConnectTenant(b.ctx, tn, "b")
		require.NoError(t, err)
		defer conn.Close(b.ctx)
		_, err = conn.Exec(b.ctx, `CREATE TABLE zzz (id int, who text)`)
		require.NoError(t, err)
	})
	// The move has begun: the swap.
	_, err = conn.Exec(b.ctx, `DROP TABLE zzz;
		CREATE FUNCTION public.who() RETURNS text LANGUAGE plpgsql AS $f$
		BEGIN PERFORM public.hostile_escalate(); RETURN current_user; END $f$;
		CREATE VIEW zzz AS SELECT 1 AS id, public.who() AS who`)
	require.NoError(t, err)
	_, err = b.eng.RunNow(b.ctx, opID)
	require.NoError(t, err)
	b.requireNotSuper(t, tn.Database, "a", "b")
	after, err := b.store.GetTenant(b.ctx, tn.ID)
	require.NoError(t, err)
	require.Equal(t, silo.TenantActive, after.State)
	log, err := hostile.Log(b.ctx, b.asTenant(t, after))
	require.NoError(t, err)
	for _, e := range log {
		require.Equal(t, tn.Database, e.SessionAs, "the view ran only in the tenant's own sessions")
	}
}

// A cast from a table's row type to text is the tenant's (it owns the
// type): the cutover's checksums never use it, so the cast's function,
// which would plant a trigger for the superuser apply of 15, never runs.
// Database settings the tenant gives every session (a role of its own,
// read-only transactions) do not reach Silo's admin sessions either, and a
// view with an INSTEAD OF trigger moves.
func TestHostileMoveCastsAndSettings(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{PgDump: requirePgDump(t)})
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("cast"), Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	tn := res.Tenant
	conn := b.asTenant(t, tn)
	require.NoError(t, hostile.Install(b.ctx, conn, tn.Database))
	db := pgx.Identifier{tn.Database}.Sanitize()
	_, err = conn.Exec(b.ctx, `
		DROP TABLE public.hostile_log;
		CREATE FUNCTION public.notes_text(notes) RETURNS text LANGUAGE plpgsql AS $f$
		BEGIN
			PERFORM public.hostile_escalate();
			CREATE TRIGGER planted BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION public.hostile_trigger();
			ALTER TABLE notes ENABLE ALWAYS TRIGGER planted;
			RETURN $1.title;
		END $f$;
		CREATE CAST (notes AS text) WITH FUNCTION public.notes_text(notes);
		CREATE VIEW recent AS SELECT * FROM notes;
		CREATE FUNCTION public.recent_insert() RETURNS trigger LANGUAGE plpgsql AS $f$
		BEGIN INSERT INTO notes (title) VALUES (NEW.title); RETURN NEW; END $f$;
		CREATE TRIGGER recent_insert INSTEAD OF INSERT ON recent FOR EACH ROW EXECUTE FUNCTION public.recent_insert();
		CREATE FUNCTION public.body() RETURNS text LANGUAGE sql AS $f$ SELECT 'a line:
\N is a null marker, and this line starts with a backslash' $f$;
		INSERT INTO notes (title) SELECT 'n-' || g FROM generate_series(1, 300) g;
		ALTER ROLE CURRENT_USER IN DATABASE `+db+` SET default_transaction_read_only = off;
		ALTER DATABASE `+db+` SET default_transaction_read_only = on;
		ALTER DATABASE `+db+` SET role = `+pgx.Identifier{tn.Database}.Sanitize())
	require.NoError(t, err)
	want, err := b.dialer.ConnectTenant(b.ctx, tn, "")
	require.NoError(t, err)
	var body string
	require.NoError(t, want.QueryRow(b.ctx, `SELECT public.body()`).Scan(&body))
	want.Close(b.ctx)

	res, err = r.Move(b.ctx, MoveRequest{ID: tn.ID, Shard: "b"}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, res.Operation.State, "%+v", res.Operation.Steps)
	b.requireNotSuper(t, tn.Database, "a", "b")
	moved, err := b.store.GetTenant(b.ctx, tn.ID)
	require.NoError(t, err)
	on := b.asTenant(t, moved)
	_, planted := triggerStates(t, b.ctx, on)["planted"]
	require.False(t, planted, "the cast's function never ran")
	var got string
	require.NoError(t, on.QueryRow(b.ctx, `SELECT public.body()`).Scan(&got))
	require.Equal(t, body, got, "a function body's line that starts with a backslash is kept")
	var n int
	require.NoError(t, on.QueryRow(b.ctx, `SELECT count(*) FROM recent`).Scan(&n))
	require.Equal(t, 300, n)
}

// Built-ins that check privileges themselves (a superuser passes) are as
// dangerous in a 15 apply's defaults as the tenant's own functions: a
// replication slot that holds the shard's WAL, other sessions' queries,
// superuser-only settings. A column the tenant drops on the source during
// the move would be filled from such a default on the target, so on 15
// the schema is moved by the paused copy, as the tenant.
func TestHostileMoveBuiltinDefaults(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{PgDump: requirePgDump(t)})
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("builtin"), Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	tn := res.Tenant
	_, err = b.asTenant(t, tn).Exec(b.ctx, `CREATE TABLE c (id int PRIMARY KEY,
		hog text DEFAULT (pg_catalog.pg_create_physical_replication_slot('hog_' || pg_catalog.txid_current(), true))::text,
		conf text DEFAULT pg_catalog.current_setting('data_directory'));
		INSERT INTO c (id, hog, conf) VALUES (1, 'x', 'y')`)
	require.NoError(t, err)
	res, err = r.Move(b.ctx, MoveRequest{ID: tn.ID, Shard: "b"}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, res.Operation.State, "%+v", res.Operation.Steps)
	if b.major(t, "b") < 16 {
		require.Equal(t, "dump", res.Operation.Move.Path)
		require.Contains(t, res.Operation.Move.PathReason, "pg_create_physical_replication_slot")
	}
	admin, err := b.dialer.ConnectAdmin(b.ctx, "b", "")
	require.NoError(t, err)
	defer admin.Close(b.ctx)
	var slots int
	require.NoError(t, admin.QueryRow(b.ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'hog\_%'`).Scan(&slots))
	require.Zero(t, slots)
}

// A move's undo after its flip (a failed cleanup, the source shard down)
// must not drop the target: it is the tenant's only live copy.
func TestMoveUndoAfterFlipKeepsTarget(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{})
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("flipped"), Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	tn := res.Tenant
	opID := startMove(t, r, b, tn, "a", "cutover", func() { b.migrateTarget(t, tn, "b") })
	for _, s := range plan(t, r, b, opID).Undo { // as if the cleanup had failed
		require.NoError(t, s.Run(engine.WithOperation(b.ctx, opID)), s.Name)
	}
	moved, err := b.store.GetTenant(b.ctx, tn.ID)
	require.NoError(t, err)
	require.Equal(t, "b", moved.Shard)
	var n int
	require.NoError(t, b.asTenant(t, moved).QueryRow(b.ctx, `SELECT count(*) FROM notes`).Scan(&n))
}

// requireNotSuper checks on every shard that role is no superuser.
func (b *bundle) requireNotSuper(t *testing.T, role string, shards ...string) {
	t.Helper()
	for _, shard := range shards {
		// A moved tenant's old role is renamed (retired): look for both.
		var super bool
		require.NoError(t, b.asAdmin(t, shard, "").QueryRow(b.ctx, `SELECT coalesce(bool_or(rolsuper), false) FROM pg_roles
			WHERE rolname = $1 OR (rolname LIKE 'silo\_moved\_%' AND rolname LIKE '%\_' || $1)`, role).Scan(&super))
		require.False(t, super, "the tenant's role became a superuser on shard %s", shard)
	}
}
