package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/api"
)

// silo check against silo dev (its warm pools filling meanwhile): clean
// exits 0; planted orphans are listed, as a table or JSON, and exit 1;
// --repair drops them and exits 0; what only an operator may fix is left,
// and the command still exits 1.
func TestCheckDev(t *testing.T) {
	t.Parallel()
	dir := devDir(t)
	ctx := context.Background()
	var out, errOut syncBuffer
	stop := background(t, &out, &errOut, "dev", "--dir", dir, "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0", "--shards", "2")
	url, token := waitEnv(t, dir, stop)
	silo := func(args ...string) (string, error) {
		t.Helper()
		return runSilo(t, ctx, "", append(args, "--url", url, "--token", token)...)
	}
	_, err := silo("tenant", "create", "acme", "--shard", "shard-1")
	require.NoError(t, err)
	got, err := silo("tenant", "create", "globex", "--shard", "shard-2", "-o", "json")
	require.NoError(t, err)
	var globex api.Tenant
	require.NoError(t, json.Unmarshal([]byte(got), &globex))

	got, err = silo("check")
	require.NoError(t, err, got)
	require.Regexp(t, `^checked 2 shards and 2 tenants in \d+ ms: clean\n$`, got)

	admin := func(shard, db string) *pgx.Conn {
		t.Helper()
		pw, err := os.ReadFile(filepath.Join(dir, "clusters", shard, "password"))
		require.NoError(t, err)
		port, err := os.ReadFile(filepath.Join(dir, "clusters", shard, "port"))
		require.NoError(t, err)
		conn, err := pgx.Connect(ctx, "postgres://silo:"+strings.TrimSpace(string(pw))+"@127.0.0.1:"+strings.TrimSpace(string(port))+"/"+db+"?sslmode=disable")
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	s1 := admin("shard-1", "postgres")
	for _, s := range []string{
		`CREATE ROLE t_strayaaaaaaaaaaaaaaaaaa`,
		`CREATE DATABASE t_strayaaaaaaaaaaaaaaaaaa OWNER t_strayaaaaaaaaaaaaaaaaaa`,
		`SELECT pg_create_logical_replication_slot('silo_move_t_ghostaaaaaaaaaaaaaaaa', 'pgoutput')`,
	} {
		_, err := s1.Exec(ctx, s)
		require.NoError(t, err, s)
	}

	got, err = silo("check")
	require.EqualError(t, err, "2 findings")
	require.Regexp(t, `^checked 2 shards and 2 tenants in \d+ ms: 2 findings, 2 repairable with --repair\n\n`+
		`KIND\s+SHARD\s+OBJECT\s+TENANT\s+REPAIRABLE\s+MESSAGE\n`+
		`orphan-slot\s+shard-1\s+postgres/silo_move_t_ghostaaaaaaaaaaaaaaaa\s+yes\s+replication slot .* holds the shard's WAL\n`+
		`orphan-database\s+shard-1\s+t_strayaaaaaaaaaaaaaaaaaa\s+yes\s+database and role t_strayaaaaaaaaaaaaaaaaaa: no tenant, operation, warm unit or retired copy names it \(\d+\.\d MiB\)\n$`, got)
	got, err = silo("check", "-o", "json")
	require.Error(t, err)
	var rep api.CheckReport
	require.NoError(t, json.Unmarshal([]byte(got), &rep), got)
	require.False(t, rep.Clean)
	require.Len(t, rep.Findings, 2)
	require.Equal(t, api.CheckFindingKind("orphan-slot"), rep.Findings[0].Kind)

	got, err = silo("check", "--repair")
	require.NoError(t, err, got)
	require.Regexp(t, `^REPAIR\s+KIND\s+SHARD\s+OBJECT\s+ERROR\n`+
		`repaired\s+orphan-slot\s+shard-1\s+postgres/silo_move_t_ghostaaaaaaaaaaaaaaaa\s*\n`+
		`repaired\s+orphan-database\s+shard-1\s+t_strayaaaaaaaaaaaaaaaaaa\s*\n\n`+
		`checked 2 shards and 2 tenants in \d+ ms: clean\n$`, got)
	got, err = silo("check")
	require.NoError(t, err, got)
	got, err = silo("audit", "--action", "check.repair", "-o", "json")
	require.NoError(t, err)
	var audit []api.AuditEntry
	require.NoError(t, json.Unmarshal([]byte(got), &audit))
	require.Len(t, audit, 2)

	// A tenant's database dropped behind the catalog's back: reported,
	// never repaired, and the command fails.
	_, err = admin("shard-2", "postgres").Exec(ctx, `DROP DATABASE `+globex.Database+` WITH (FORCE)`)
	require.NoError(t, err)
	got, err = silo("check", "--repair", "-o", "json")
	require.EqualError(t, err, "1 finding left after the repair")
	var rr api.CheckRepair
	require.NoError(t, json.Unmarshal([]byte(got), &rr), got)
	require.Empty(t, rr.Repairs)
	require.Len(t, rr.Report.Findings, 1)
	f := rr.Report.Findings[0]
	require.Equal(t, api.CheckFindingKind("missing-database"), f.Kind)
	require.Equal(t, "globex", *f.TenantId)
	require.False(t, f.Repairable)
	require.NoError(t, stop())
}
