package rebalancer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

// A live tenant moves from shard a to b while a writer inserts through the
// router: every acknowledged row is on b once, the writer's longest gap is
// the cutover's pause, the old database is retired on a, and the tenant
// keeps working on b.
func TestMoveLive(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{PgDump: requirePgDump(t)})
	mover := newID("mover")
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: mover, Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	tn := res.Tenant
	conn, err := b.dialer.ConnectTenant(b.ctx, tn, "")
	require.NoError(t, err)
	_, err = conn.Exec(b.ctx, `INSERT INTO notes (title) SELECT 'seed-' || g FROM generate_series(1, 2000) g`)
	require.NoError(t, err)
	conn.Close(b.ctx)

	rt, err := router.New(router.Config{Catalog: b.pool, Store: b.store, SecretKey: testKey})
	require.NoError(t, err)
	require.NoError(t, rt.Start(b.ctx))
	t.Cleanup(rt.Stop)

	// The writer: one row at a time, each acknowledged or failed.
	var acked sync.Map
	var n, failures atomic.Int64
	var maxGap atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }); <-done }
	t.Cleanup(halt) // before the test's end, whatever happens
	go func() {
		defer close(done)
		last := time.Now()
		for {
			select {
			case <-stop:
				return
			default:
			}
			i := n.Add(1)
			title := fmt.Sprintf("w-%d", i)
			ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
			err := rt.WithTenant(ctx, mover, func(c *pgx.Conn) error {
				_, err := c.Exec(ctx, `INSERT INTO notes (title) VALUES ($1)`, title)
				return err
			})
			cancel()
			if err != nil {
				failures.Add(1)
				t.Errorf("write %s: %v", title, err)
				time.Sleep(20 * time.Millisecond)
				continue
			}
			acked.Store(title, true)
			if gap := time.Since(last); gap.Nanoseconds() > maxGap.Load() {
				maxGap.Store(gap.Nanoseconds())
			}
			last = time.Now()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)

	res, err = r.Move(b.ctx, MoveRequest{ID: mover, Shard: "b"}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, res.Operation.State, "%+v", res.Operation)
	require.Equal(t, "b", res.Tenant.Shard)
	require.Equal(t, silo.TenantActive, res.Tenant.State)
	time.Sleep(300 * time.Millisecond) // writes on the new shard too
	halt()

	t.Logf("writes: %d acknowledged, %d failed; longest gap %s", countMap(&acked), failures.Load(), time.Duration(maxGap.Load()))
	require.Zero(t, failures.Load(), "the writer saw no error")
	require.Less(t, time.Duration(maxGap.Load()), 3*time.Second, "the write pause")

	moved, err := b.store.GetTenant(b.ctx, mover)
	require.NoError(t, err)
	conn, err = b.dialer.ConnectTenant(b.ctx, moved, "")
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	var seeds int
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT count(*) FROM notes WHERE title LIKE 'seed-%'`).Scan(&seeds))
	require.Equal(t, 2000, seeds)
	rows, err := conn.Query(b.ctx, `SELECT title, count(*) FROM notes WHERE title LIKE 'w-%' GROUP BY title`)
	require.NoError(t, err)
	onTarget := map[string]int{}
	for rows.Next() {
		var title string
		var c int
		require.NoError(t, rows.Scan(&title, &c))
		onTarget[title] = c
	}
	require.NoError(t, rows.Err())
	lost := 0
	acked.Range(func(k, _ any) bool {
		if onTarget[k.(string)] != 1 {
			lost++
		}
		return true
	})
	require.Zero(t, lost, "every acknowledged row is on the target once")
	for title, c := range onTarget {
		require.Equal(t, 1, c, title)
	}
	// The identity sequence followed: a new row gets a new id.
	_, err = conn.Exec(b.ctx, `INSERT INTO notes (title) VALUES ('after the move')`)
	require.NoError(t, err)

	db, role := b.shardHas(t, "a", b.tenant(t, mover).Database)
	require.False(t, db, "the old database is renamed")
	require.False(t, role)
	retired, err := b.store.ExpiredRetiredDatabases(b.ctx, time.Now().Add(48*time.Hour), 10)
	require.NoError(t, err)
	require.Len(t, retired, 1)
	require.Equal(t, "a", retired[0].Shard)
	op, err := b.prov.Operation(b.ctx, res.Operation.ID)
	require.NoError(t, err)
	for _, s := range op.Steps {
		require.Equal(t, silo.OpSucceeded, s.State, s.Name)
	}
	require.Equal(t, "live", op.Move.Path, "the operation's outcome, read through the provisioner")
	// The move's metrics, as /metrics shows them.
	families, err := b.registry.Gather()
	require.NoError(t, err)
	seen := map[string]bool{}
	for _, f := range families {
		switch f.GetName() {
		case "silo_move_cutover_seconds":
			require.EqualValues(t, 1, f.GetMetric()[0].GetHistogram().GetSampleCount())
			seen[f.GetName()] = true
		case "silo_move_bytes_total":
			require.Positive(t, f.GetMetric()[0].GetCounter().GetValue())
			seen[f.GetName()] = true
		}
	}
	require.Len(t, seen, 2, "both move metrics are registered")

	// Its old database goes after the grace period.
	require.NoError(t, b.prov.PurgeExpired(b.ctx))
	_, err = b.pool.Exec(b.ctx, `UPDATE retired_databases SET drop_after = now() - interval '1 second'`)
	require.NoError(t, err)
	require.NoError(t, b.prov.PurgeExpired(b.ctx))
	db, role = b.shardHas(t, "a", retired[0].Name)
	require.False(t, db)
	require.False(t, role)
}

func countMap(m *sync.Map) int {
	n := 0
	m.Range(func(any, any) bool { n++; return true })
	return n
}

// Moves that cannot be: refused, and nothing changes.
func TestMoveBadInput(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{})
	_, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: "stay", Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: "us-1", DSN: b.shardDSN("b", "postgres"), Region: "us"})
	require.NoError(t, err)
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: "off", DSN: b.shardDSN("b", "postgres"), Region: "eu"})
	require.NoError(t, err)
	_, err = b.store.SetShardState(b.ctx, "off", silo.ShardDisabled)
	require.NoError(t, err)

	for _, tc := range []struct {
		req  MoveRequest
		code string
	}{
		{MoveRequest{ID: "stay", Shard: "a"}, silo.ECONFLICT},
		{MoveRequest{ID: "stay", Shard: "us-1"}, silo.ECONFLICT},
		{MoveRequest{ID: "stay", Shard: "off"}, silo.ECONFLICT},
		{MoveRequest{ID: "stay", Shard: "nowhere"}, silo.ENOTFOUND},
		{MoveRequest{ID: "stay", Shard: "BAD NAME"}, silo.EINVALID},
		{MoveRequest{ID: "ghost", Shard: "b"}, silo.ENOTFOUND},
	} {
		_, err := r.Move(b.ctx, tc.req, time.Second)
		requireCode(t, err, tc.code)
	}
	tn, err := b.store.GetTenant(b.ctx, "stay")
	require.NoError(t, err)
	require.Equal(t, "a", tn.Shard)
	db, _ := b.shardHas(t, "b", tn.Database)
	require.False(t, db, "nothing made on the target")
}

// The target shard going down mid-move: the tenant never stops working on
// its source, the operation cannot finish its undo while the target is
// down and stays running for its recovery job, and once the target is back
// the undo removes everything the move made.
func TestMoveTargetDown(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{PgDump: requirePgDump(t), ConnectTimeout: 2 * time.Second})
	c, cfg := b.ownShard(t, "c", nil)

	id := newID("tgt-down")
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: id, Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	name := res.Tenant.Database
	conn, err := b.dialer.ConnectTenant(b.ctx, res.Tenant, "")
	require.NoError(t, err)
	_, err = conn.Exec(b.ctx, `INSERT INTO notes (title) SELECT repeat('x', 200) FROM generate_series(1, 200000)`)
	require.NoError(t, err)
	conn.Close(b.ctx)

	// Stop the target as soon as the move has made the tenant's database
	// there.
	stopped := make(chan error, 1)
	go func() {
		admin, err := pgx.Connect(b.ctx, c.DSN("postgres"))
		if err != nil {
			stopped <- err
			return
		}
		for {
			var made bool
			if err := admin.QueryRow(b.ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&made); err != nil {
				stopped <- err
				return
			}
			if made {
				admin.Close(b.ctx)
				stopped <- c.Stop(b.ctx)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	moved, err := r.Move(b.ctx, MoveRequest{ID: id, Shard: "c"}, time.Minute)
	require.NoError(t, <-stopped)
	require.NoError(t, err, "left running, not failed, while its undo cannot finish")
	require.Equal(t, silo.OpRunning, moved.Operation.State)

	tn, err := b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	require.Equal(t, "a", tn.Shard)
	require.Equal(t, silo.TenantActive, tn.State)
	conn, err = b.dialer.ConnectTenant(b.ctx, tn, "")
	require.NoError(t, err, "the tenant works on its source")
	var rows int
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT count(*) FROM notes`).Scan(&rows))
	conn.Close(b.ctx)
	require.Equal(t, 200000, rows)

	c, err = pgcluster.Start(b.ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	op, err := b.eng.RunNow(b.ctx, moved.Operation.ID) // what the recovery job does
	require.NoError(t, err)
	require.Equal(t, silo.OpFailed, op.State, "%+v", op.Steps)
	admin, err := pgx.Connect(b.ctx, c.DSN("postgres"))
	require.NoError(t, err)
	defer admin.Close(b.ctx)
	var db, role bool
	require.NoError(t, admin.QueryRow(b.ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1),
		EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, name).Scan(&db, &role))
	require.False(t, db || role, "the target is clean")
	src, err := pgx.Connect(b.ctx, b.shardDSN("a", "postgres"))
	require.NoError(t, err)
	defer src.Close(b.ctx)
	var slots int
	require.NoError(t, src.QueryRow(b.ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, "silo_move_"+name).Scan(&slots))
	require.Zero(t, slots, "no slot left on the source")
	tn, err = b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	require.Equal(t, "a", tn.Shard)
	require.Equal(t, silo.TenantActive, tn.State)
}

// A target that already holds a database of the tenant's name (not made by
// the move): the move fails, and its undo leaves that database alone.
func TestMoveTargetHasDatabase(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{PgDump: requirePgDump(t)})
	id := newID("squat")
	_, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: id, Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	name := b.tenant(t, id).Database
	admin, err := pgx.Connect(b.ctx, b.shardDSN("b", "postgres"))
	require.NoError(t, err)
	defer admin.Close(b.ctx)
	_, err = admin.Exec(b.ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	require.NoError(t, err)
	t.Cleanup(func() { // after the deferred Close: a connection of its own
		if c, err := pgx.Connect(context.Background(), b.shardDSN("b", "postgres")); err == nil {
			_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize())
			_ = c.Close(context.Background())
		}
	})

	_, err = r.Move(b.ctx, MoveRequest{ID: id, Shard: "b"}, time.Minute)
	requireCode(t, err, silo.ECONFLICT)
	db, role := b.shardHas(t, "b", name)
	require.True(t, db, "not the move's to drop")
	require.False(t, role, "no role made for it either")
	tn, err := b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	require.Equal(t, "a", tn.Shard)
	require.Equal(t, silo.TenantActive, tn.State)
}

// The source shard going down mid-move: the move gives up, and once the
// source is back the tenant is in service there, as it was, and nothing of
// the move is left on either shard.
func TestMoveSourceDown(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{PgDump: requirePgDump(t), ConnectTimeout: 2 * time.Second})
	s, cfg := b.ownShard(t, "s", nil)

	id := newID("src-down")
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: id, Shard: "s"}, 30*time.Second)
	require.NoError(t, err)
	name := res.Tenant.Database
	conn, err := b.dialer.ConnectTenant(b.ctx, res.Tenant, "")
	require.NoError(t, err)
	_, err = conn.Exec(b.ctx, `INSERT INTO notes (title) SELECT repeat('x', 200) FROM generate_series(1, 200000)`)
	require.NoError(t, err)
	conn.Close(b.ctx)
	_ = res

	// Stop the source once the move has made the tenant's database on b.
	stopped := make(chan error, 1)
	go func() {
		admin, err := pgx.Connect(b.ctx, b.shardDSN("b", "postgres"))
		if err != nil {
			stopped <- err
			return
		}
		defer admin.Close(b.ctx)
		for {
			var made bool
			if err := admin.QueryRow(b.ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&made); err != nil {
				stopped <- err
				return
			}
			if made {
				stopped <- s.Stop(b.ctx)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	moved, err := r.Move(b.ctx, MoveRequest{ID: id, Shard: "b"}, time.Minute)
	require.NoError(t, <-stopped)
	require.NoError(t, err, "left running while its undo cannot reach the source")
	require.Equal(t, silo.OpRunning, moved.Operation.State)
	tn, err := b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	require.Equal(t, "s", tn.Shard, "still the source's")

	s, err = pgcluster.Start(b.ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	op, err := b.eng.RunNow(b.ctx, moved.Operation.ID) // what the recovery job does
	require.NoError(t, err)
	require.Equal(t, silo.OpFailed, op.State, "%+v", op.Steps)

	tn, err = b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	require.Equal(t, "s", tn.Shard)
	require.Equal(t, silo.TenantActive, tn.State)
	conn, err = b.dialer.ConnectTenant(b.ctx, tn, "")
	require.NoError(t, err, "back in service on its source")
	var rows int
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT count(*) FROM notes`).Scan(&rows))
	conn.Close(b.ctx)
	require.Equal(t, 200000, rows)
	db, role := b.shardHas(t, "b", name)
	require.False(t, db || role, "nothing left on the target")
	admin, err := pgx.Connect(b.ctx, s.DSN("postgres"))
	require.NoError(t, err)
	defer admin.Close(b.ctx)
	var slots int
	require.NoError(t, admin.QueryRow(b.ctx, `SELECT count(*) FROM pg_replication_slots`).Scan(&slots))
	require.Zero(t, slots, "no slot left on the source")
}

// A source without logical replication (wal_level replica): the tenant is
// moved by dump and restore, paused meanwhile, with all its rows.
func TestMoveByDump(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{PgDump: requirePgDump(t)})
	rc, _ := b.ownShard(t, "r", map[string]string{"wal_level": "replica"})

	id := newID("dumped")
	_, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: id, Shard: "r"}, 30*time.Second)
	require.NoError(t, err)
	admin, err := pgx.Connect(b.ctx, rc.DSN(b.tenant(t, id).Database))
	require.NoError(t, err)
	_, err = admin.Exec(b.ctx, `INSERT INTO notes (title) SELECT 'n-' || g FROM generate_series(1, 5000) g`)
	require.NoError(t, err)
	admin.Close(b.ctx)

	res, err := r.Move(b.ctx, MoveRequest{ID: id, Shard: "a"}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, res.Operation.State, "%+v", res.Operation.Steps)
	require.Equal(t, "a", res.Tenant.Shard)
	conn, err := b.dialer.ConnectTenant(b.ctx, res.Tenant, "")
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	var n int
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT count(*) FROM notes`).Scan(&n))
	require.Equal(t, 5000, n)
	_, err = conn.Exec(b.ctx, `INSERT INTO notes (title) VALUES ('after')`)
	require.NoError(t, err, "its sequence followed")
}

// A server that dies mid-move, after it made the target's database, copied
// the schema and started the replication: the next server resumes the move
// from its steps, which are idempotent, and finishes it.
func TestCrashedMoveIsResumed(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{PgDump: requirePgDump(t)})
	id := newID("crash-move")
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: id, Shard: "a"}, 30*time.Second)
	require.NoError(t, err)
	conn, err := b.dialer.ConnectTenant(b.ctx, res.Tenant, "")
	require.NoError(t, err)
	_, err = conn.Exec(b.ctx, `INSERT INTO notes (title) SELECT 'c-' || g FROM generate_series(1, 3000) g`)
	require.NoError(t, err)
	conn.Close(b.ctx)

	// What the dead server did: accept the move and run its first steps.
	opID := uuid.NewString()
	params := map[string]any{"operation": opID, "from": "a", "to": "b"}
	require.NoError(t, b.store.Mutate(b.ctx, "tenant.move", "tenant/"+id, params, func(tx pgx.Tx) error {
		return b.eng.Insert(b.ctx, tx, shardmap.NewOperation{ID: opID, Kind: silo.OpMove, TenantID: id, Params: params})
	}))
	op, err := b.store.GetOperation(b.ctx, opID)
	require.NoError(t, err)
	pl, err := r.movePlan(op, params)
	require.NoError(t, err)
	for _, s := range pl.Steps[:5] { // check-source .. replicate
		require.NoError(t, s.Run(b.ctx), s.Name)
	}

	done, err := b.eng.RunNow(b.ctx, opID) // what the recovery job does
	require.NoError(t, err)
	require.Equal(t, silo.OpSucceeded, done.State, "%+v", done.Steps)
	tn, err := b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	require.Equal(t, "b", tn.Shard)
	conn, err = b.dialer.ConnectTenant(b.ctx, tn, "")
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	var n int
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT count(*) FROM notes WHERE title LIKE 'c-%'`).Scan(&n))
	require.Equal(t, 3000, n, "every row once")
}
