package shardmap_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/shardmap"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type bundle struct {
	pool  *pgxpool.Pool
	fleet *pgtest.Fleet
	logs  *syncBuffer
	ctx   context.Context
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// setup returns a Store over a fresh, migrated catalog database.
func setup(t *testing.T) (*shardmap.Store, *bundle) {
	t.Helper()
	fleet := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	logs := &syncBuffer{}
	pool, store := catalogtest.New(t, slog.New(slog.NewJSONHandler(logs, nil)))
	ctx = silo.WithActor(ctx, silo.Actor{Name: "tester", RequestID: "req-1"})
	return store, &bundle{pool: pool, fleet: fleet, logs: logs, ctx: ctx}
}

func requireCode(t *testing.T, err error, code string) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, silo.ErrorCode(err), "error: %v", err)
}

func shardNames(t *testing.T, s *shardmap.Store, ctx context.Context) []string {
	t.Helper()
	list, err := s.ListShards(ctx, silo.Page{Limit: silo.MaxPageLimit})
	require.NoError(t, err)
	names := []string{}
	for _, sh := range list.Items {
		names = append(names, sh.Name)
	}
	return names
}

func TestCreateShard(t *testing.T) {
	t.Parallel()
	s, b := setup(t)
	dsn := b.fleet.Shards[0].DSN("postgres")

	sh, err := s.CreateShard(b.ctx, silo.Shard{Name: "eu-1", DSN: dsn})
	require.NoError(t, err)
	require.Equal(t, "eu-1", sh.Name)
	require.Equal(t, silo.DefaultRegion, sh.Region)
	require.Equal(t, silo.DefaultWeight, sh.Weight)
	require.Equal(t, silo.ShardActive, sh.State)
	require.Equal(t, 0, sh.TenantCount)
	require.WithinDuration(t, time.Now(), sh.CreatedAt, time.Minute)

	got, err := s.GetShard(b.ctx, "eu-1")
	require.NoError(t, err)
	require.Equal(t, dsn, got.DSN, "the catalog keeps the whole DSN for Silo's own use")

	audit, err := s.ListAudit(b.ctx, shardmap.AuditFilter{Target: "shard/eu-1"}, silo.Page{})
	require.NoError(t, err)
	require.Len(t, audit.Items, 1)
	e := audit.Items[0]
	require.Equal(t, "shard.create", e.Action)
	require.Equal(t, silo.AuditResultOK, e.Result)
	require.Equal(t, "tester", e.Actor)
	require.Equal(t, "req-1", e.RequestID)
	require.Equal(t, silo.RedactDSN(dsn), e.Params["dsn"])

	password := b.fleet.Shards[0].Password()
	require.NotContains(t, fmt.Sprint(e.Params), password)
	require.NotContains(t, b.logs.String(), password)

	_, err = s.CreateShard(b.ctx, silo.Shard{Name: "eu-1", DSN: dsn})
	requireCode(t, err, silo.ECONFLICT)
	require.Equal(t, []string{"eu-1"}, shardNames(t, s, b.ctx))
}

func TestCreateShardBadInput(t *testing.T) {
	t.Parallel()
	s, b := setup(t)
	shard := b.fleet.Shards[0]
	good := shard.DSN("postgres")
	wrongPassword := strings.Replace(good, shard.Password(), "not-the-password-1234", 1)

	// A role that may log in but not provision tenants.
	conn, err := pgx.Connect(b.ctx, good)
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	weakRole := fmt.Sprintf("weak_%d", time.Now().UnixNano())
	_, err = conn.Exec(b.ctx, "CREATE ROLE "+pgx.Identifier{weakRole}.Sanitize()+" LOGIN PASSWORD 'weak-password'")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), "DROP ROLE "+pgx.Identifier{weakRole}.Sanitize()) })
	weak := fmt.Sprintf("postgres://%s:weak-password@127.0.0.1:%d/postgres", weakRole, shard.Port())

	for _, tc := range []struct {
		name    string
		shard   silo.Shard
		message string
	}{
		{"capitals", silo.Shard{Name: "EU-1", DSN: good}, "lowercase"},
		{"underscore", silo.Shard{Name: "eu_1", DSN: good}, "lowercase"},
		{"leading digit", silo.Shard{Name: "1eu", DSN: good}, "start with a letter"},
		{"trailing hyphen", silo.Shard{Name: "eu-", DSN: good}, "hyphen"},
		{"quote", silo.Shard{Name: `eu"1`, DSN: good}, "lowercase"},
		{"path", silo.Shard{Name: "../eu", DSN: good}, "lowercase"},
		{"too long", silo.Shard{Name: strings.Repeat("a", 33), DSN: good}, "longer than 32"},
		{"empty", silo.Shard{Name: "", DSN: good}, "required"},
		{"bad region", silo.Shard{Name: "eu-1", DSN: good, Region: "EU West"}, "region"},
		{"weight too low", silo.Shard{Name: "eu-1", DSN: good, Weight: -1}, "weight"},
		{"weight too high", silo.Shard{Name: "eu-1", DSN: good, Weight: silo.MaxWeight + 1}, "weight"},
		{"no dsn", silo.Shard{Name: "eu-1"}, "dsn is required"},
		{"unparsable dsn", silo.Shard{Name: "eu-1", DSN: "postgres://a:b@[::1"}, "not a valid"},
		{"unreachable", silo.Shard{Name: "eu-1", DSN: "postgres://silo:secret-pw-1@127.0.0.1:1/postgres"}, "cannot reach shard"},
		{"wrong password", silo.Shard{Name: "eu-1", DSN: wrongPassword}, "cannot connect to shard"},
		{"weak role", silo.Shard{Name: "eu-1", DSN: weak}, "CREATEDB and CREATEROLE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.CreateShard(b.ctx, tc.shard)
			code := silo.EINVALID
			if tc.name == "unreachable" {
				code = silo.EUNAVAILABLE // nothing answered: not the request's fault
			}
			requireCode(t, err, code)
			msg := silo.ErrorMessage(err)
			require.Contains(t, msg, tc.message)
			require.NotContains(t, msg, "\n", "one line")
			for _, secret := range []string{"secret-pw-1", "not-the-password-1234", "weak-password"} {
				require.NotContains(t, msg, secret)
			}
		})
	}
	require.Empty(t, shardNames(t, s, b.ctx), "nothing registered")

	// Every refused attempt is in the audit log, with its code.
	audit, err := s.ListAudit(b.ctx, shardmap.AuditFilter{Action: "shard.create"}, silo.Page{})
	require.NoError(t, err)
	require.Len(t, audit.Items, 16)
	unavailable := 0
	for _, e := range audit.Items {
		if e.Result == silo.EUNAVAILABLE {
			unavailable++ // the unreachable one
		} else {
			require.Equal(t, silo.EINVALID, e.Result)
		}
		require.NotEmpty(t, e.Error)
		require.NotContains(t, fmt.Sprint(e.Params), "not-the-password-1234")
		require.NotContains(t, fmt.Sprint(e.Params), "secret-pw-1")
	}
	require.Equal(t, 1, unavailable)
	require.NotContains(t, b.logs.String(), "not-the-password-1234")
}

func TestListShardsPages(t *testing.T) {
	t.Parallel()
	s, b := setup(t)
	dsn := b.fleet.Shards[1].DSN("postgres")
	var want []string
	for i := 5; i >= 1; i-- { // created out of order: lists are by name
		name := fmt.Sprintf("s-%d", i)
		_, err := s.CreateShard(b.ctx, silo.Shard{Name: name, DSN: dsn, Region: "eu", Weight: i})
		require.NoError(t, err)
		want = append([]string{name}, want...)
	}

	var got []string
	p := silo.Page{Limit: 2}
	pages := 0
	for {
		list, err := s.ListShards(b.ctx, p)
		require.NoError(t, err)
		pages++
		for _, sh := range list.Items {
			got = append(got, sh.Name)
		}
		if list.NextCursor == "" {
			break
		}
		p.Cursor = list.NextCursor
	}
	require.Equal(t, want, got)
	require.Equal(t, 3, pages)

	for _, p := range []silo.Page{{Limit: -1}, {Limit: silo.MaxPageLimit + 1}, {Cursor: "%%%"}} {
		_, err := s.ListShards(b.ctx, p)
		requireCode(t, err, silo.EINVALID)
	}
}

func TestShardState(t *testing.T) {
	t.Parallel()
	s, b := setup(t)
	_, err := s.CreateShard(b.ctx, silo.Shard{Name: "a", DSN: b.fleet.Shards[0].DSN("postgres")})
	require.NoError(t, err)

	for _, state := range []silo.ShardState{silo.ShardDraining, silo.ShardDisabled, silo.ShardActive, silo.ShardActive} {
		sh, err := s.SetShardState(b.ctx, "a", state)
		require.NoError(t, err)
		require.Equal(t, state, sh.State)
	}

	_, err = s.SetShardState(b.ctx, "nope", silo.ShardDraining)
	requireCode(t, err, silo.ENOTFOUND)
	_, err = s.SetShardState(b.ctx, "a", "broken")
	requireCode(t, err, silo.EINVALID)
	sh, err := s.GetShard(b.ctx, "a")
	require.NoError(t, err)
	require.Equal(t, silo.ShardActive, sh.State, "refused changes change nothing")

	audit, err := s.ListAudit(b.ctx, shardmap.AuditFilter{Action: "shard.drain"}, silo.Page{})
	require.NoError(t, err)
	require.Len(t, audit.Items, 2) // "a", then the refused "nope"
	require.Equal(t, silo.ENOTFOUND, audit.Items[0].Result)
	require.Equal(t, silo.AuditResultOK, audit.Items[1].Result)
}

func TestDeleteShard(t *testing.T) {
	t.Parallel()
	s, b := setup(t)
	dsn := b.fleet.Shards[0].DSN("postgres")
	_, err := s.CreateShard(b.ctx, silo.Shard{Name: "a", DSN: dsn})
	require.NoError(t, err)
	_, err = s.CreateShard(b.ctx, silo.Shard{Name: "b", DSN: dsn})
	require.NoError(t, err)
	tn, err := s.CreateTenant(b.ctx, silo.Tenant{ID: "acme", Shard: "a", Database: "t_acme", Region: "default", State: silo.TenantActive})
	require.NoError(t, err)

	sh, err := s.GetShard(b.ctx, "a")
	require.NoError(t, err)
	require.Equal(t, 1, sh.TenantCount)

	err = s.DeleteShard(b.ctx, "a")
	requireCode(t, err, silo.ECONFLICT)
	require.Contains(t, silo.ErrorMessage(err), "1 tenants")
	requireCode(t, s.DeleteShard(b.ctx, "nope"), silo.ENOTFOUND)
	require.Equal(t, []string{"a", "b"}, shardNames(t, s, b.ctx))

	require.NoError(t, s.DeleteShard(b.ctx, "b"))
	require.Equal(t, []string{"a"}, shardNames(t, s, b.ctx))

	// A purged tenant is a tombstone: it no longer holds the shard.
	tn.State = silo.TenantPurged
	_, err = s.UpdateTenant(b.ctx, *tn)
	require.NoError(t, err)
	require.NoError(t, s.DeleteShard(b.ctx, "a"))
	got, err := s.GetTenant(b.ctx, "acme")
	require.NoError(t, err)
	require.Equal(t, silo.TenantPurged, got.State)
	require.Empty(t, got.Shard)
}

func TestTenants(t *testing.T) {
	t.Parallel()
	s, b := setup(t)
	dsn := b.fleet.Shards[0].DSN("postgres")
	for _, name := range []string{"a", "b"} {
		_, err := s.CreateShard(b.ctx, silo.Shard{Name: name, DSN: dsn, Region: "eu"})
		require.NoError(t, err)
	}
	for i := range 7 {
		shard := []string{"a", "b"}[i%2]
		id := fmt.Sprintf("t-%d", i)
		tn, err := s.CreateTenant(b.ctx, silo.Tenant{ID: id, Shard: shard, Database: silo.DatabaseName(id), Region: "eu", State: silo.TenantActive, SchemaVersion: 3})
		require.NoError(t, err)
		require.Equal(t, int64(1), tn.Epoch)
	}

	got, err := s.GetTenant(b.ctx, "t-2")
	require.NoError(t, err)
	require.Equal(t, "a", got.Shard)
	require.Equal(t, int64(3), got.SchemaVersion)
	_, err = s.GetTenant(b.ctx, "t-99")
	requireCode(t, err, silo.ENOTFOUND)

	_, err = s.CreateTenant(b.ctx, silo.Tenant{ID: "t-1", Shard: "a", Database: "t_other", Region: "eu", State: silo.TenantActive})
	requireCode(t, err, silo.ECONFLICT)
	for _, bad := range []silo.Tenant{
		{ID: "Acme", Shard: "a", Database: "x", Region: "eu", State: silo.TenantActive},
		{ID: "a;drop", Shard: "a", Database: "x", Region: "eu", State: silo.TenantActive},
		{ID: "silo", Shard: "a", Database: "x", Region: "eu", State: silo.TenantActive},
		{ID: "ok-id", Shard: "nope", Database: "x", Region: "eu", State: silo.TenantActive},
		{ID: "ok-id", Shard: "a", Database: "x", Region: "eu", State: "zombie"},
	} {
		_, err := s.CreateTenant(b.ctx, bad)
		requireCode(t, err, silo.EINVALID)
	}

	// Filters and pages.
	var ids []string
	p := silo.Page{Limit: 2}
	for {
		list, err := s.ListTenants(b.ctx, shardmap.TenantFilter{Shard: "a"}, p)
		require.NoError(t, err)
		for _, tn := range list.Items {
			ids = append(ids, tn.ID)
		}
		if p.Cursor = list.NextCursor; p.Cursor == "" {
			break
		}
	}
	require.Equal(t, []string{"t-0", "t-2", "t-4", "t-6"}, ids)
	list, err := s.ListTenants(b.ctx, shardmap.TenantFilter{Region: "us"}, silo.Page{})
	require.NoError(t, err)
	require.Empty(t, list.Items)

	// Optimistic concurrency: a change based on a stale read is refused.
	first, err := s.GetTenant(b.ctx, "t-3")
	require.NoError(t, err)
	changed := *first
	changed.State = silo.TenantSuspended
	updated, err := s.UpdateTenant(b.ctx, changed)
	require.NoError(t, err)
	require.Equal(t, first.Epoch+1, updated.Epoch)
	require.Equal(t, silo.TenantSuspended, updated.State)

	stale := *first
	stale.Shard = "a"
	_, err = s.UpdateTenant(b.ctx, stale)
	requireCode(t, err, silo.ECONFLICT)
	now, err := s.GetTenant(b.ctx, "t-3")
	require.NoError(t, err)
	require.Equal(t, "b", now.Shard, "the stale write changed nothing")

	missing := *first
	missing.ID = "t-404"
	_, err = s.UpdateTenant(b.ctx, missing)
	requireCode(t, err, silo.ENOTFOUND)
}

func TestAuditPages(t *testing.T) {
	t.Parallel()
	s, b := setup(t)
	dsn := b.fleet.Shards[0].DSN("postgres")
	_, err := s.CreateShard(b.ctx, silo.Shard{Name: "a", DSN: dsn})
	require.NoError(t, err)
	for range 3 {
		_, err := s.SetShardState(b.ctx, "a", silo.ShardDraining)
		require.NoError(t, err)
	}
	other := silo.WithActor(b.ctx, silo.Actor{Name: "someone-else"})
	_, err = s.SetShardState(other, "a", silo.ShardActive)
	require.NoError(t, err)

	var actions []string
	p := silo.Page{Limit: 2}
	for {
		list, err := s.ListAudit(b.ctx, shardmap.AuditFilter{}, p)
		require.NoError(t, err)
		for _, e := range list.Items {
			actions = append(actions, e.Action)
		}
		if p.Cursor = list.NextCursor; p.Cursor == "" {
			break
		}
	}
	require.Equal(t, []string{"shard.activate", "shard.drain", "shard.drain", "shard.drain", "shard.create"}, actions)

	list, err := s.ListAudit(b.ctx, shardmap.AuditFilter{Actor: "someone-else"}, silo.Page{})
	require.NoError(t, err)
	require.Len(t, list.Items, 1)
	_, err = s.ListAudit(b.ctx, shardmap.AuditFilter{}, silo.Page{Cursor: base64.RawURLEncoding.EncodeToString([]byte("not-a-number"))})
	requireCode(t, err, silo.EINVALID)
}
