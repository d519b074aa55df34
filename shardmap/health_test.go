package shardmap_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/shardmap"
)

// A catalog that hangs is known to be down within Interval + 2 × Timeout:
// Err refuses at once, and a call guarded before ends with the outage's
// error, not its own deadline. Once the catalog answers, Guard lets calls
// through again and they succeed.
func TestCatalogHealth(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	cat := catalogtest.NewOwn(t, log)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h, err := shardmap.NewCatalogHealth(shardmap.CatalogHealthConfig{Pool: cat.Pool, Logger: log})
	require.NoError(t, err)
	require.NoError(t, h.Start(ctx))
	defer h.Stop()
	t.Cleanup(func() { _ = cat.Resume() }) // before the pool closes
	require.True(t, h.Up())
	require.NoError(t, h.Err())
	_, err = cat.Store.ListShards(ctx, silo.Page{})
	require.NoError(t, err)

	// A call in flight on the catalog when it hangs.
	gctx, gcancel, err := h.Guard(ctx)
	require.NoError(t, err)
	defer gcancel()
	require.NoError(t, cat.Pause())
	frozen := time.Now()
	_, err = cat.Store.ListShards(gctx, silo.Page{})
	took := time.Since(frozen)
	t.Logf("a guarded call ended after %v", took.Round(10*time.Millisecond))
	require.Less(t, took, shardmap.DefaultCatalogProbeInterval+2*shardmap.DefaultCatalogProbeTimeout+3*time.Second)
	require.Error(t, err)
	cause := shardmap.GuardCause(gctx)
	require.Equal(t, silo.EUNAVAILABLE, silo.ErrorCode(cause), "cause: %v", cause)
	require.False(t, h.Up())

	// Refused at once while it is down, with a retry hint.
	start := time.Now()
	_, _, err = h.Guard(ctx)
	require.Less(t, time.Since(start), 100*time.Millisecond)
	se, ok := errors.AsType[*silo.Error](err)
	require.True(t, ok, "err: %v", err)
	require.Equal(t, silo.EUNAVAILABLE, se.Code)
	require.Positive(t, se.RetryAfter)
	require.Equal(t, err, h.Err())

	require.NoError(t, cat.Resume())
	require.Eventually(t, h.Up, 10*time.Second, 50*time.Millisecond, "up once it answers")
	gctx2, gcancel2, err := h.Guard(ctx)
	require.NoError(t, err)
	defer gcancel2()
	_, err = cat.Store.ListShards(gctx2, silo.Page{})
	require.NoError(t, err)
	require.Nil(t, shardmap.GuardCause(gctx2))
}
