package main

import (
	"encoding/json"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// Erasure means every copy: a tenant moved twice leaves a retired copy on
// each shard it left; its purge destroys them at once, not after their
// retirement, and the audit entry lists each.
func TestPurgeDestroysRetiredCopies(t *testing.T) {
	t.Parallel()
	if !hasPgDumpFor(t) {
		t.Skip("a move's schema copy needs pg_dump, which the PostgreSQL 16+ packages lack")
	}
	f := newCrashFleet(t)
	s := f.start(t, "")
	f.addShards(t, s)
	createTenant(t, s, "erased", "s0")
	writeRows(t, s, "erased", 100)
	s.must(t, "POST", "/v1/tenants/erased/move?wait=60s", map[string]any{"shard": "s1"}, 200)
	s.must(t, "POST", "/v1/tenants/erased/move?wait=60s", map[string]any{"shard": "s0"}, 200)
	var copies int
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT count(*) FROM retired_databases WHERE tenant_id = 'erased'`).Scan(&copies))
	require.Equal(t, 2, copies, "a retired copy on each shard it left")

	s.must(t, "DELETE", "/v1/tenants/erased?purge=true&wait=60s", nil, 200)
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT count(*) FROM retired_databases WHERE tenant_id = 'erased'`).Scan(&copies))
	require.Zero(t, copies)
	for _, c := range f.shards {
		conn, err := pgx.Connect(f.ctx, c.DSN("postgres"))
		require.NoError(t, err)
		var dbs int
		require.NoError(t, conn.QueryRow(f.ctx, `SELECT count(*) FROM pg_database WHERE datname LIKE 't\_%'`).Scan(&dbs))
		conn.Close(f.ctx)
		require.Zero(t, dbs, "no copy of the tenant's data is left on %s", c.DSN(""))
	}
	var raw []byte
	require.NoError(t, f.pool.QueryRow(f.ctx, `
		SELECT params FROM audit_log WHERE action = 'tenant.purge-copies' AND target = 'tenant/erased'`).Scan(&raw))
	var params struct {
		Copies []struct{ Shard, Database string }
	}
	require.NoError(t, json.Unmarshal(raw, &params))
	require.Len(t, params.Copies, 2)
	shards := []string{params.Copies[0].Shard, params.Copies[1].Shard}
	require.ElementsMatch(t, []string{"s0", "s1"}, shards)
	report := s.must(t, "GET", "/v1/check", nil, 200)
	require.Equal(t, true, report["clean"], "%v", report["findings"])
}
