package provisioner

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/shardmap"
)

// startWithoutRunning does what Create does up to the moment the operation
// would run, as if the server died right after accepting the request.
func startWithoutRunning(t *testing.T, p *Provisioner, b *bundle, req CreateRequest) string {
	t.Helper()
	opID := newUUID()
	err := b.store.Mutate(b.ctx, "tenant.create", "tenant/"+req.ID, nil, func(tx pgx.Tx) error {
		shard, err := p.place(b.ctx, tx, req)
		if err != nil {
			return err
		}
		if _, err := b.store.InsertTenant(b.ctx, tx, silo.Tenant{
			ID: req.ID, Shard: shard.Name, Database: silo.NewDatabaseName(), Region: shard.Region, State: silo.TenantProvisioning,
		}, p.sealer.Seal([]byte("a-password-of-the-dead-server"), req.ID)); err != nil {
			return err
		}
		return p.eng.Insert(b.ctx, tx, shardmap.NewOperation{ID: opID, Kind: silo.OpCreate, TenantID: req.ID})
	})
	require.NoError(t, err)
	return opID
}

// A server that dies after accepting a create, and after its first step,
// has its operation finished by another server's recovery sweep.
func TestCrashedCreateIsResumed(t *testing.T) {
	t.Parallel()
	p, b := setupRecovering(t, Config{})
	id := newID("crash")
	opID := startWithoutRunning(t, p, b, CreateRequest{ID: id, Shard: "a"})

	// The dead server had made the role, and nothing else.
	op, err := b.store.GetOperation(b.ctx, opID)
	require.NoError(t, err)
	pl, err := p.createPlan(op, map[string]any{})
	require.NoError(t, err)
	require.NoError(t, pl.Steps[0].Run(b.ctx))
	_, role := b.shardHas(t, "a", b.dbName(t, id))
	require.True(t, role)

	require.Eventually(t, func() bool {
		op, err := b.store.GetOperation(b.ctx, opID)
		return err == nil && op.State == silo.OpSucceeded
	}, 20*time.Second, 100*time.Millisecond, "the recovery job finishes the operation")
	tn, err := b.store.GetTenant(b.ctx, id)
	require.NoError(t, err)
	require.Equal(t, silo.TenantActive, tn.State)
	op, err = b.store.GetOperation(b.ctx, opID)
	require.NoError(t, err)
	// The role step ran again over the dead server's role, harmlessly.
	for _, st := range op.Steps {
		require.Equal(t, silo.OpSucceeded, st.State, st.Name)
	}
	conn, err := pgx.Connect(b.ctx, b.tenantDSN(t, p, tn))
	require.NoError(t, err)
	conn.Close(b.ctx)
}

// A shard that hangs mid-create (SIGSTOP) fails the step in StepTimeout; the
// rollback cannot reach it either, so the operation stays running, the
// tenant stays provisioning (known to the catalog), and once the shard is
// back the rollback, once begun, finishes: nothing is left on the shard,
// and the id is free again. Not parallel: it freezes a shared shard.
func TestCreateOnHungShard(t *testing.T) {
	p, b := setup(t, Config{ConnectTimeout: 2 * time.Second})
	// Warm the shard connection and template first, as a running server has;
	// under a loaded test machine that can take longer than the short step
	// timeout the rest of the test uses.
	_, err := p.Create(b.ctx, CreateRequest{ID: newID("before-hang"), Shard: "b"}, time.Minute)
	require.NoError(t, err)
	b.eng.SetStepTimeout(2 * time.Second)

	require.NoError(t, b.fleet.Shards[1].Pause())
	resumed := false
	defer func() {
		if !resumed {
			_ = b.fleet.Shards[1].Resume()
		}
	}()
	id := newID("hung")
	start := time.Now()
	res, err := p.Create(b.ctx, CreateRequest{ID: id, Shard: "b"}, 30*time.Second)
	require.NoError(t, err, "not failed: left running for recovery")
	require.Less(t, time.Since(start), 15*time.Second, "a hung shard fails fast")
	require.Equal(t, silo.OpRunning, res.Operation.State)
	require.Equal(t, silo.TenantProvisioning, res.Tenant.State)
	require.Contains(t, res.Operation.Steps[0].Error, "did not answer in time")

	require.NoError(t, b.fleet.Shards[1].Resume())
	resumed = true
	op, err := b.eng.RunNow(b.ctx, res.Operation.ID) // what the recovery job does
	require.NoError(t, err)
	require.Equal(t, silo.OpFailed, op.State, "%+v", op.Steps)
	require.Contains(t, op.Error, "was undone")
	db, role := b.shardHas(t, "b", res.Tenant.Database)
	require.False(t, db || role, "the rollback left nothing")
	_, err = b.store.GetTenant(b.ctx, id)
	requireCode(t, err, silo.ENOTFOUND)
	b.eng.SetStepTimeout(30 * time.Second)
	_, err = p.Create(b.ctx, CreateRequest{ID: id, Shard: "b"}, time.Minute)
	require.NoError(t, err, "the id is free again")
}

// A create that fails for good is rolled back: no database, no role, no
// catalog row, and the id can be used again.
func TestFailedCreateRollsBack(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	id := newID("rollback")
	opID := startWithoutRunning(t, p, b, CreateRequest{ID: id, Shard: "a"})
	name := b.dbName(t, id)
	// Break the sealed password so the role step cannot open it.
	_, err := b.pool.Exec(b.ctx, `UPDATE tenants SET password_sealed = '\x01deadbeef' WHERE id = $1`, id)
	require.NoError(t, err)
	op, err := b.eng.RunNow(b.ctx, opID)
	require.NoError(t, err)
	require.Equal(t, silo.OpFailed, op.State)
	require.Equal(t, silo.EINTERNAL, op.ErrorCode)
	db, role := b.shardHas(t, "a", name)
	require.False(t, db || role)
	_, err = b.store.GetTenant(b.ctx, id)
	requireCode(t, err, silo.ENOTFOUND)

	r, err := p.Create(b.ctx, CreateRequest{ID: id}, time.Minute)
	require.NoError(t, err, "the id is free again")
	require.Equal(t, silo.TenantActive, r.Tenant.State)
}

// Stopping the engine and the provisioner leaves no goroutine of theirs
// behind. Not parallel: it counts goroutines.
func TestStopLeaksNothing(t *testing.T) {
	pgtest.Start(t)
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) }) // last: after the catalog pool closes
	p, b := setup(t, Config{WarmPoolSize: 1})
	id := newID("leak")
	_, err := p.Create(b.ctx, CreateRequest{ID: id, Shard: "a"}, time.Minute)
	require.NoError(t, err)
	_, err = p.Suspend(b.ctx, id, time.Minute)
	require.NoError(t, err)
	require.NoError(t, p.maintain(b.ctx, ""))
}
