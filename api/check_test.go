package api_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/pgcluster"
)

// GET /v1/check reports a clean fleet clean and an orphan as repairable;
// POST /v1/check/repair drops it, audited, and answers the fleet clean.
// The shard is a cluster of the test's own: a check reads the whole
// server, and the test binary's shared shards hold other tests' tenants.
func TestCheckAPI(t *testing.T) {
	t.Parallel()
	b := setup(t, serverOpts{check: true})
	dir, err := os.MkdirTemp("", "api-check-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	shard, err := pgcluster.Start(b.ctx, pgcluster.Config{Dir: filepath.Join(dir, "s1"), Fast: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = shard.Stop(context.Background()) })
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: "s1", DSN: shard.DSN("postgres"), Region: "eu"})
	require.NoError(t, err)
	b.createTenant(t, "chk-acme")

	r := b.do(t, "GET", "/v1/check", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	rep := decode[api.CheckReport](t, r)
	require.True(t, rep.Clean, "findings: %+v", rep.Findings)
	require.Empty(t, rep.Findings)
	require.Equal(t, 1, rep.Tenants)
	require.Equal(t, 1, rep.VersionsRead)
	require.Len(t, rep.Shards, 1)
	require.Equal(t, "s1", rep.Shards[0].Name)
	require.Nil(t, rep.Shards[0].Error)

	conn, err := pgx.Connect(b.ctx, shard.DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	for _, s := range []string{`CREATE ROLE t_strayaaaaaaaaaaaaaaaaaa`, `CREATE DATABASE t_strayaaaaaaaaaaaaaaaaaa OWNER t_strayaaaaaaaaaaaaaaaaaa`} {
		_, err := conn.Exec(b.ctx, s)
		require.NoError(t, err)
	}
	rep = decode[api.CheckReport](t, b.do(t, "GET", "/v1/check", ""))
	require.False(t, rep.Clean)
	require.Len(t, rep.Findings, 1)
	f := rep.Findings[0]
	require.Equal(t, api.CheckFindingKind("orphan-database"), f.Kind)
	require.Equal(t, "s1", f.Shard)
	require.Equal(t, "t_strayaaaaaaaaaaaaaaaaaa", f.Object)
	require.True(t, f.Repairable)
	require.Contains(t, f.Message, "database and role t_strayaaaaaaaaaaaaaaaaaa: no tenant")
	r = b.do(t, "GET", "/metrics", "")
	require.Contains(t, string(r.body), `silo_check_findings{kind="orphan-database"} 1`)

	r = b.do(t, "POST", "/v1/check/repair", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	rr := decode[api.CheckRepair](t, r)
	require.Len(t, rr.Repairs, 1)
	require.Equal(t, api.CheckRepairResultOutcome("repaired"), rr.Repairs[0].Outcome)
	require.Equal(t, "t_strayaaaaaaaaaaaaaaaaaa", rr.Repairs[0].Object)
	require.True(t, rr.Report.Clean, "findings: %+v", rr.Report.Findings)
	var left bool
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 't_strayaaaaaaaaaaaaaaaaaa')`).Scan(&left))
	require.False(t, left)

	audit := decode[api.AuditList](t, b.do(t, "GET", "/v1/audit?action=check.repair", ""))
	require.Len(t, audit.Items, 1)
	require.Equal(t, "admin", audit.Items[0].Actor)
	require.Equal(t, "shard/s1", audit.Items[0].Target)
	require.Equal(t, "ok", audit.Items[0].Result)
	r = b.do(t, "GET", "/metrics", "")
	require.Contains(t, string(r.body), `silo_check_findings{kind="orphan-database"} 0`)
	require.Contains(t, string(r.body), `silo_check_repairs_total{kind="orphan-database",outcome="repaired"} 1`)

	// A tenant key reaches no operator endpoint; a server without a
	// checker says so.
	key := b.createKey(t, "chk-acme", `{"name":"app"}`)
	r = b.doAuth(t, "Bearer "+key.Token, "POST", "/v1/check/repair", "")
	require.Equal(t, 401, r.status)
	require.Contains(t, *r.problem(t).Detail, "needs the admin token")
	bare := setup(t)
	r = bare.do(t, "GET", "/v1/check", "")
	require.Equal(t, 503, r.status)
	require.Equal(t, api.ProblemCode(silo.EUNAVAILABLE), r.problem(t).Code)
}
