package migrations_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/migrations"
)

// A run started under a span is in that span's trace: its preparation a
// child of it, and each tenant's migration, the canary's and the next
// wave's, a child of the preparation, with the tenant, the shard and the
// versions.
func TestTraceMigrationRun(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	s, b := setupTracedRunner(t, tp)
	b.ownShard(t, "tr") // its template takes this test's migration alone
	for _, shared := range []string{"a", "b"} {
		_, err := b.store.SetShardState(b.ctx, shared, silo.ShardDisabled)
		require.NoError(t, err)
	}
	ids := map[string]bool{}
	for i := range 3 {
		id := fmt.Sprintf("traced%d", i)
		b.create(t, s, id, "tr")
		ids[id] = true
	}
	writeMigration(t, b.dir, "00002_tags.sql", "-- +goose Up\nCREATE TABLE tags (id int);\n-- +goose Down\nDROP TABLE tags;\n")

	ctx, request := tp.Tracer("test").Start(b.ctx, "POST /v1/migrations")
	canary := 1
	run, err := s.runner.StartRun(ctx, migrations.RunOptions{Canary: &canary})
	require.NoError(t, err)
	request.End()
	run = waitRun(t, b.ctx, s.runner, run.ID)
	require.Equal(t, silo.RunSucceeded, run.State, "%+v", run)

	attrs := func(s sdktrace.ReadOnlySpan) map[attribute.Key]string {
		m := map[attribute.Key]string{}
		for _, kv := range s.Attributes() {
			m[kv.Key] = kv.Value.Emit()
		}
		return m
	}
	var prepare sdktrace.ReadOnlySpan
	var tenants []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		switch s.Name() {
		case "migration.prepare":
			require.Nil(t, prepare, "one preparation")
			prepare = s
		case "migration.tenant":
			tenants = append(tenants, s)
		}
	}
	require.NotNil(t, prepare)
	require.Equal(t, request.SpanContext().TraceID(), prepare.SpanContext().TraceID())
	require.Equal(t, request.SpanContext().SpanID(), prepare.Parent().SpanID())
	require.Equal(t, run.ID, attrs(prepare)["silo.migration.run"])
	require.Len(t, tenants, 3, "one span per tenant")
	for _, s := range tenants {
		a := attrs(s)
		require.True(t, ids[a["silo.tenant.id"]], "tenant %q", a["silo.tenant.id"])
		delete(ids, a["silo.tenant.id"])
		require.Equal(t, prepare.SpanContext().TraceID(), s.SpanContext().TraceID())
		require.Equal(t, prepare.SpanContext().SpanID(), s.Parent().SpanID(), "a child of the preparation, the next wave's too")
		require.Equal(t, "tr", a["silo.shard"])
		require.Equal(t, "done", a["silo.outcome"])
		require.Equal(t, "1", a["silo.migration.from_version"])
		require.Equal(t, "2", a["silo.migration.to_version"])
		require.Equal(t, run.ID, a["silo.migration.run"])
	}
}
