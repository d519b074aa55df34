package rebalancer

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/provisioner"
)

// silo_move_replication_lag_seconds grows while a move waits for its
// target to apply the source's writes, and is back to 0 once the target
// has caught up. The target's subscription is disabled meanwhile, so that
// the wait lasts; the move is then undone.
func TestMoveReplicationLagMetric(t *testing.T) {
	t.Parallel()
	r, b := setup(t, provisioner.Config{})
	tn := b.create(t, "lag", "a")
	opID := startMove(t, r, b, tn, "a", "initial-copy", func() { b.migrateTarget(t, tn, "b") })
	t.Cleanup(func() {
		for _, s := range plan(t, r, b, opID).Undo {
			require.NoError(t, s.Run(engine.WithOperation(b.ctx, opID)), s.Name)
		}
		b.requireNoReplication(t, "a", "b", tn.Database)
	})
	// lag reads the gauge as /metrics would; -1 when it is absent. It fails
	// no test: require.Eventually calls it on a goroutine of its own.
	lag := func() float64 {
		families, err := b.registry.Gather()
		if err != nil {
			return -1
		}
		for _, f := range families {
			if f.GetName() == "silo_move_replication_lag_seconds" {
				return f.GetMetric()[0].GetGauge().GetValue()
			}
		}
		return -1
	}
	require.Zero(t, lag(), "no move waits")

	sub := pgx.Identifier{"silo_move_" + tn.Database}.Sanitize()
	target := b.asAdmin(t, "b", tn.Database)
	_, err := target.Exec(b.ctx, "ALTER SUBSCRIPTION "+sub+" DISABLE")
	require.NoError(t, err)
	m := &move{r: r, id: tn.ID, from: "a", to: "b"}
	require.NoError(t, m.load(b.ctx))
	done := make(chan error, 1)
	go func() { done <- m.awaitFence(b.ctx, time.Minute) }()
	require.Eventually(t, func() bool { return lag() >= 0.5 }, 20*time.Second, 20*time.Millisecond, "the gauge grows while the target lags")
	select {
	case err := <-done:
		t.Fatalf("the target caught up with its subscription disabled: %v", err)
	default:
	}

	_, err = target.Exec(b.ctx, "ALTER SUBSCRIPTION "+sub+" ENABLE")
	require.NoError(t, err)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(45 * time.Second):
		t.Fatal("the target did not catch up once its subscription was enabled")
	}
	require.Zero(t, lag(), "back to 0 once the target caught up")
}
