package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/shardmap"
)

// addShards registers the test binary's two shard clusters: s1 in region eu
// and s2 in region us.
func (b *bundle) addShards(t *testing.T) {
	t.Helper()
	for i, sh := range []silo.Shard{{Name: "s1", Region: "eu"}, {Name: "s2", Region: "us"}} {
		sh.DSN = b.fleet.Shards[i].DSN("postgres")
		_, err := b.store.CreateShard(b.ctx, sh)
		require.NoError(t, err)
	}
}

// tenantIDs lists the catalog's tenants, whatever their state.
func (b *bundle) tenantIDs(t *testing.T) []string {
	t.Helper()
	list, err := b.store.ListTenants(b.ctx, shardmap.TenantFilter{}, silo.Page{Limit: silo.MaxPageLimit})
	require.NoError(t, err)
	ids := []string{}
	for _, tn := range list.Items {
		ids = append(ids, tn.ID)
	}
	return ids
}

// databaseExists reports whether shard cluster i holds database name.
func (b *bundle) databaseExists(t *testing.T, i int, name string) bool {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.fleet.Shards[i].DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(b.ctx))
	var exists bool
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists))
	return exists
}

// jsonBody encodes v as a request body.
func jsonBody(t *testing.T, v any) string {
	t.Helper()
	raw, err := json.Marshal(v)
	require.NoError(t, err)
	return string(raw)
}

// await polls an operation until it finishes.
func (b *bundle) await(t *testing.T, location string) api.Operation {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := b.do(t, "GET", location, "")
		require.Equal(t, 200, r.status, "body: %s", r.body)
		op := decode[api.Operation](t, r)
		if op.State != api.OperationStateRunning {
			return op
		}
		if time.Now().After(deadline) {
			t.Fatalf("operation %s still running after 30s: %s", op.Id, r.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTenantLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)

	r := b.do(t, "POST", "/v1/tenants", `{"id":"life-acme","shard":"s1"}`)
	require.Equal(t, 201, r.status, "body: %s", r.body)
	require.Equal(t, "/v1/tenants/life-acme", r.header.Get("Location"))
	require.NotContains(t, strings.ToLower(string(r.body)), "password")
	created := decode[api.Tenant](t, r)
	require.Regexp(t, `^t_[a-z2-7]{20}$`, created.Database, "a name that says nothing of the tenant")
	require.Equal(t, api.Tenant{
		Id: "life-acme", Shard: "s1", Database: created.Database, State: api.TenantStateActive, Region: "eu",
		SchemaVersion: created.SchemaVersion, Epoch: created.Epoch, CreatedAt: created.CreatedAt, UpdatedAt: created.UpdatedAt,
		Limits: api.TenantLimits{Connections: silo.DefaultTenantConnections, TempFileMB: silo.DefaultTenantTempFileMB},
	}, created)
	require.Positive(t, created.SchemaVersion, "the tenant's database is migrated")
	require.Positive(t, created.Epoch)
	require.True(t, b.databaseExists(t, 0, created.Database))

	r = b.do(t, "GET", "/v1/tenants/life-acme", "")
	require.Equal(t, 200, r.status)
	require.Equal(t, created, decode[api.Tenant](t, r))

	// Limits: changed on the role and in the catalog; bad ones change nothing.
	r = b.do(t, "PATCH", "/v1/tenants/life-acme", `{"limits":{"connections":7,"tempFileMB":-1}}`)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.Equal(t, api.TenantLimits{Connections: 7, TempFileMB: -1}, decode[api.Tenant](t, r).Limits)
	for _, bad := range []struct {
		body   string
		status int
		code   string
	}{
		{`{"limits":{"connections":0,"tempFileMB":10}}`, 422, silo.EINVALID},
		{`{"limits":{"connections":7,"tempFileMB":-2}}`, 422, silo.EINVALID},
		{`{"limits":{"connections":"many","tempFileMB":10}}`, 400, silo.EMALFORMED},
		{`{"limits":{"connections":7,"tempFileMB":10},"superuser":true}`, 400, silo.EMALFORMED},
	} {
		r = b.do(t, "PATCH", "/v1/tenants/life-acme", bad.body)
		require.Equal(t, bad.status, r.status, "%s: %s", bad.body, r.body)
		require.Equal(t, api.ProblemCode(bad.code), r.problem(t).Code)
	}
	r = b.do(t, "PATCH", "/v1/tenants/nobody", `{"limits":{"connections":7,"tempFileMB":10}}`)
	require.Equal(t, 404, r.status, "body: %s", r.body)
	r = b.do(t, "GET", "/v1/tenants/life-acme", "")
	require.Equal(t, api.TenantLimits{Connections: 7, TempFileMB: -1}, decode[api.Tenant](t, r).Limits)
	created = decode[api.Tenant](t, r)

	// Placement by region: us has only s2.
	r = b.do(t, "POST", "/v1/tenants", `{"id":"life-beta","region":"us"}`)
	require.Equal(t, 201, r.status, "body: %s", r.body)
	beta := decode[api.Tenant](t, r)
	require.Equal(t, "s2", beta.Shard)
	require.Equal(t, "us", beta.Region)

	ids := func(r response) []string {
		t.Helper()
		require.Equal(t, 200, r.status, "body: %s", r.body)
		var out []string
		for _, tn := range decode[api.TenantList](t, r).Items {
			out = append(out, tn.Id)
		}
		return out
	}
	require.Equal(t, []string{"life-acme", "life-beta"}, ids(b.do(t, "GET", "/v1/tenants", "")))
	require.Equal(t, []string{"life-acme"}, ids(b.do(t, "GET", "/v1/tenants?shard=s1", "")))
	require.Equal(t, []string{"life-beta"}, ids(b.do(t, "GET", "/v1/tenants?region=us", "")))
	require.Empty(t, ids(b.do(t, "GET", "/v1/tenants?region=us&shard=s1", "")))
	r = b.do(t, "GET", "/v1/tenants?limit=1", "")
	page := decode[api.TenantList](t, r)
	require.Len(t, page.Items, 1)
	require.NotNil(t, page.NextCursor)
	r = b.do(t, "GET", "/v1/tenants?limit=1&cursor="+*page.NextCursor, "")
	page = decode[api.TenantList](t, r)
	require.Equal(t, "life-beta", page.Items[0].Id)
	require.Nil(t, page.NextCursor)

	// Suspend, twice (the second changes nothing), and resume.
	for range 2 {
		r = b.do(t, "POST", "/v1/tenants/life-acme/suspend", "")
		require.Equal(t, 200, r.status, "body: %s", r.body)
		require.Equal(t, api.TenantStateSuspended, decode[api.Tenant](t, r).State)
	}
	require.Equal(t, []string{"life-acme"}, ids(b.do(t, "GET", "/v1/tenants?state=suspended", "")))
	r = b.do(t, "POST", "/v1/tenants/life-acme/resume", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.Equal(t, api.TenantStateActive, decode[api.Tenant](t, r).State)
	require.Empty(t, ids(b.do(t, "GET", "/v1/tenants?state=suspended", "")))

	if hasPgDump(t) {
		r = b.do(t, "GET", "/v1/tenants/life-acme/export", "")
		require.Equal(t, 200, r.status, "body: %s", r.body)
		require.Equal(t, "application/octet-stream", r.header.Get("Content-Type"))
		require.Equal(t, `attachment; filename="life-acme.dump"`, r.header.Get("Content-Disposition"))
		require.True(t, strings.HasPrefix(string(r.body), "PGDMP"), "a pg_dump custom archive: %.20q", r.body)
	}

	// A soft delete keeps the data for the grace period.
	r = b.do(t, "DELETE", "/v1/tenants/life-acme", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	deleted := decode[api.Tenant](t, r)
	require.Equal(t, api.TenantStateDeleted, deleted.State)
	require.NotNil(t, deleted.DeletedAt)
	require.NotNil(t, deleted.PurgeAfter)
	require.True(t, deleted.PurgeAfter.After(*deleted.DeletedAt))
	require.Greater(t, deleted.Epoch, created.Epoch)
	r = b.do(t, "GET", "/v1/tenants/life-acme", "")
	require.Equal(t, api.TenantStateDeleted, decode[api.Tenant](t, r).State)
	require.True(t, b.databaseExists(t, 0, created.Database))

	// Purging drops the database; the id stays taken.
	r = b.do(t, "DELETE", "/v1/tenants/life-acme?purge=true", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.Equal(t, api.TenantStatePurged, decode[api.Tenant](t, r).State)
	require.False(t, b.databaseExists(t, 0, created.Database))
	r = b.do(t, "GET", "/v1/tenants/life-acme", "")
	require.Equal(t, 200, r.status)
	require.Equal(t, api.TenantStatePurged, decode[api.Tenant](t, r).State)
	require.Equal(t, []string{"life-acme"}, ids(b.do(t, "GET", "/v1/tenants?state=purged", "")))
	for _, req := range [][2]string{{"DELETE", "/v1/tenants/life-acme?purge=true"}, {"GET", "/v1/tenants/life-acme/export"}} {
		r = b.do(t, req[0], req[1], "")
		require.Equal(t, 404, r.status, "%s %s: %s", req[0], req[1], r.body)
		require.Equal(t, api.ProblemCode(silo.ENOTFOUND), r.problem(t).Code)
	}
	r = b.do(t, "POST", "/v1/tenants", `{"id":"life-acme"}`)
	require.Equal(t, 409, r.status, "a purged tenant's id is never reused: %s", r.body)
	require.Equal(t, api.ProblemCode(silo.ECONFLICT), r.problem(t).Code)

	// Purging an active tenant at once works too.
	r = b.do(t, "DELETE", "/v1/tenants/life-beta?purge=true", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.Equal(t, api.TenantStatePurged, decode[api.Tenant](t, r).State)
	require.False(t, b.databaseExists(t, 1, beta.Database))
}

func TestTenantOperations(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)

	// wait=0s answers at once: 202 and the operation to follow.
	r := b.do(t, "POST", "/v1/tenants?wait=0s", `{"id":"op-async"}`)
	require.Equal(t, 202, r.status, "body: %s", r.body)
	op := decode[api.Operation](t, r)
	require.Equal(t, "/v1/operations/"+op.Id, r.header.Get("Location"))
	require.Equal(t, api.Create, op.Kind)
	require.Equal(t, "op-async", op.TenantId)
	require.Equal(t, api.OperationStateRunning, op.State)

	done := b.await(t, r.header.Get("Location"))
	require.Equal(t, api.OperationStateSucceeded, done.State, "operation: %+v", done)
	require.Equal(t, op.Id, done.Id)
	require.NotNil(t, done.FinishedAt)
	require.Nil(t, done.Error)
	require.NotEmpty(t, done.Steps)
	for _, st := range done.Steps {
		require.Equal(t, api.OperationStateSucceeded, st.State, "step %s", st.Name)
		require.Positive(t, st.Attempts)
		require.NotNil(t, st.FinishedAt)
	}
	r = b.do(t, "GET", "/v1/tenants/op-async", "")
	require.Equal(t, api.TenantStateActive, decode[api.Tenant](t, r).State)

	r = b.do(t, "DELETE", "/v1/tenants/op-async?purge=true&wait=0s", "")
	require.Equal(t, 202, r.status, "body: %s", r.body)
	op = decode[api.Operation](t, r)
	require.Equal(t, api.Purge, op.Kind)
	require.Equal(t, api.OperationStateSucceeded, b.await(t, r.header.Get("Location")).State)
	r = b.do(t, "GET", "/v1/tenants/op-async", "")
	require.Equal(t, api.TenantStatePurged, decode[api.Tenant](t, r).State)

	r = b.do(t, "GET", "/v1/operations/nope", "")
	require.Equal(t, 404, r.status)
	require.Equal(t, api.ProblemCode(silo.ENOTFOUND), r.problem(t).Code)
}

func TestTenantIdempotencyKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)

	// A long wait: on a busy machine a create can outlast the default 10s,
	// and the first outcome would be a 202 instead.
	first := b.do(t, "POST", "/v1/tenants?wait=25s", `{"id":"idem-a"}`, "Idempotency-Key", "key-1")
	require.Equal(t, 201, first.status, "body: %s", first.body)
	again := b.do(t, "POST", "/v1/tenants?wait=25s", `{"id":"idem-a"}`, "Idempotency-Key", "key-1")
	require.Equal(t, 201, again.status, "a retry answers the first outcome: %s", again.body)
	require.Equal(t, decode[api.Tenant](t, first), decode[api.Tenant](t, again))

	// The key with another request is refused, and creates nothing.
	r := b.do(t, "POST", "/v1/tenants", `{"id":"idem-b"}`, "Idempotency-Key", "key-1")
	require.Equal(t, 409, r.status, "body: %s", r.body)
	require.Equal(t, api.ProblemCode(silo.ECONFLICT), r.problem(t).Code)
	// Without the key, the same request is a second create of a taken id.
	r = b.do(t, "POST", "/v1/tenants", `{"id":"idem-a"}`)
	require.Equal(t, 409, r.status, "body: %s", r.body)
	require.Contains(t, *r.problem(t).Detail, "idem-a")
	require.Equal(t, []string{"idem-a"}, b.tenantIDs(t))
}

func TestTenantBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	_, err := b.store.SetShardState(b.ctx, "s2", silo.ShardDraining)
	require.NoError(t, err)

	create := func(id string, extra ...string) string {
		m := map[string]string{"id": id}
		for i := 0; i+1 < len(extra); i += 2 {
			m[extra[i]] = extra[i+1]
		}
		return jsonBody(t, m)
	}
	for _, tc := range []struct {
		name, method, path, body string
		header                   []string
		status                   int
		code, detail             string
	}{
		{"capitals", "POST", "/v1/tenants", create("Acme"), nil, 422, silo.EINVALID, "lowercase"},
		{"quote", "POST", "/v1/tenants", create(`a"b`), nil, 422, silo.EINVALID, "lowercase"},
		{"semicolon", "POST", "/v1/tenants", create("a;drop database postgres"), nil, 422, silo.EINVALID, "lowercase"},
		{"space", "POST", "/v1/tenants", create("a b"), nil, 422, silo.EINVALID, "lowercase"},
		{"path", "POST", "/v1/tenants", create("../etc"), nil, 422, silo.EINVALID, "lowercase"},
		{"trailing hyphen", "POST", "/v1/tenants", create("acme-"), nil, 422, silo.EINVALID, "not end with a hyphen"},
		{"too long", "POST", "/v1/tenants", create(strings.Repeat("a", 49)), nil, 422, silo.EINVALID, "longer than 48"},
		{"reserved", "POST", "/v1/tenants", create("postgres"), nil, 422, silo.EINVALID, "reserved"},
		{"no id", "POST", "/v1/tenants", `{}`, nil, 422, silo.EINVALID, "required"},
		{"unknown shard", "POST", "/v1/tenants", create("bad-shard", "shard", "nope"), nil, 422, silo.EINVALID, "nope"},
		{"draining shard", "POST", "/v1/tenants", create("bad-drain", "shard", "s2"), nil, 422, silo.EINVALID, "s2"},
		{"empty shard", "POST", "/v1/tenants", create("bad-empty", "shard", ""), nil, 422, silo.EINVALID, "shard"},
		{"unknown region", "POST", "/v1/tenants", create("bad-region", "region", "mars"), nil, 422, silo.EINVALID, "mars"},
		{"unknown field", "POST", "/v1/tenants", `{"id":"bad-field","colour":"red"}`, nil, 400, silo.EMALFORMED, "colour"},
		{"malformed json", "POST", "/v1/tenants", `{"id":`, nil, 400, silo.EMALFORMED, "not valid JSON"},
		{"wait not a duration", "POST", "/v1/tenants?wait=soon", create("bad-wait"), nil, 400, silo.EMALFORMED, `wait "soon"`},
		{"wait too long", "POST", "/v1/tenants?wait=2m", create("bad-wait"), nil, 422, silo.EINVALID, "between 0s and 1m0s"},
		{"wait negative", "POST", "/v1/tenants?wait=-1s", create("bad-wait"), nil, 422, silo.EINVALID, "between"},
		{"key too long", "POST", "/v1/tenants", create("bad-key"), []string{"Idempotency-Key", strings.Repeat("k", 129)}, 422, silo.EINVALID, "Idempotency-Key"},
		{"bad state filter", "GET", "/v1/tenants?state=gone", "", nil, 422, silo.EINVALID, "state"},
		{"bad limit", "GET", "/v1/tenants?limit=0", "", nil, 422, silo.EINVALID, "limit"},
		{"bad cursor", "GET", "/v1/tenants?cursor=%25%25", "", nil, 422, silo.EINVALID, "cursor"},
		{"unknown tenant", "GET", "/v1/tenants/nope", "", nil, 404, silo.ENOTFOUND, "nope"},
		{"suspend unknown", "POST", "/v1/tenants/nope/suspend", "", nil, 404, silo.ENOTFOUND, "nope"},
		{"resume unknown", "POST", "/v1/tenants/nope/resume", "", nil, 404, silo.ENOTFOUND, "nope"},
		{"delete unknown", "DELETE", "/v1/tenants/nope", "", nil, 404, silo.ENOTFOUND, "nope"},
		{"delete bad wait", "DELETE", "/v1/tenants/nope?wait=soon", "", nil, 400, silo.EMALFORMED, "wait"},
		{"purge not a boolean", "DELETE", "/v1/tenants/nope?purge=maybe", "", nil, 400, silo.EMALFORMED, "purge"},
		{"export unknown", "GET", "/v1/tenants/nope/export", "", nil, 404, silo.ENOTFOUND, "nope"},
		{"unknown operation", "GET", "/v1/operations/nope", "", nil, 404, silo.ENOTFOUND, "nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := b.do(t, tc.method, tc.path, tc.body, tc.header...)
			require.Equal(t, tc.status, r.status, "body: %s", r.body)
			p := r.problem(t)
			require.Equal(t, api.ProblemCode(tc.code), p.Code)
			require.Contains(t, *p.Detail, tc.detail)
			require.Nil(t, p.OperationId)
		})
	}
	require.Empty(t, b.tenantIDs(t), "bad input created nothing")
}

func TestTenantConcurrentCreates(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	auth := "Bearer " + token

	// Distinct ids: every one is created.
	const n = 50
	var wg sync.WaitGroup
	results := make([]response, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			results[i], errs[i] = b.send(auth, "POST", "/v1/tenants?wait=30s", fmt.Sprintf(`{"id":"conc-%02d"}`, i))
		})
	}
	wg.Wait()
	for i, r := range results {
		require.NoError(t, errs[i])
		b.validate(t, "POST", "/v1/tenants?wait=30s", fmt.Sprintf(`{"id":"conc-%02d"}`, i), r)
		require.Equal(t, 201, r.status, "conc-%02d: %s", i, r.body)
		tn := decode[api.Tenant](t, r)
		require.Equal(t, fmt.Sprintf("conc-%02d", i), tn.Id)
		require.NotEmpty(t, tn.Shard)
	}
	require.Len(t, b.tenantIDs(t), n)

	// One id, ten racers: one wins, the others are told it is taken.
	const racers = 10
	results = make([]response, racers)
	errs = make([]error, racers)
	for i := range racers {
		wg.Go(func() {
			results[i], errs[i] = b.send(auth, "POST", "/v1/tenants?wait=30s", `{"id":"race-one"}`)
		})
	}
	wg.Wait()
	statuses := map[int]int{}
	for i, r := range results {
		require.NoError(t, errs[i])
		b.validate(t, "POST", "/v1/tenants?wait=30s", `{"id":"race-one"}`, r)
		statuses[r.status]++
		if r.status == 409 {
			require.Equal(t, api.ProblemCode(silo.ECONFLICT), r.problem(t).Code)
		}
	}
	require.Equal(t, map[int]int{201: 1, 409: racers - 1}, statuses)
	tn, err := b.store.GetTenant(b.ctx, "race-one")
	require.NoError(t, err)
	require.Equal(t, silo.TenantActive, tn.State)
}

func TestTenantAuth(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	for _, req := range [][3]string{
		{"POST", "/v1/tenants", `{"id":"auth-a"}`},
		{"GET", "/v1/tenants", ""},
		{"GET", "/v1/tenants/auth-a", ""},
		{"DELETE", "/v1/tenants/auth-a?purge=true", ""},
		{"POST", "/v1/tenants/auth-a/suspend", ""},
		{"GET", "/v1/tenants/auth-a/export", ""},
		{"GET", "/v1/operations/x", ""},
	} {
		r := b.doAuth(t, "", req[0], req[1], req[2])
		require.Equal(t, 401, r.status, "%s %s", req[0], req[1])
		require.Equal(t, api.ProblemCode(silo.EUNAUTHORIZED), r.problem(t).Code)
	}
	require.Empty(t, b.tenantIDs(t))
}

// brokenExport fails every export after writing written.
type brokenExport struct {
	api.Provisioner
	written []byte
}

func (p brokenExport) Export(_ context.Context, id string, w io.Writer) error {
	if _, err := w.Write(p.written); err != nil {
		return err
	}
	return silo.Errorf(silo.EUNAVAILABLE, "shard of tenant %q cannot be reached", id)
}

func TestTenantExportFails(t *testing.T) {
	t.Parallel()

	// Before the first byte: a problem, and no download headers.
	b := setup(t, serverOpts{provisioner: brokenExport{}})
	r := b.do(t, "GET", "/v1/tenants/exp-a/export", "")
	require.Equal(t, 503, r.status, "body: %s", r.body)
	require.Equal(t, api.ProblemCode(silo.EUNAVAILABLE), r.problem(t).Code)
	require.Empty(t, r.header.Get("Content-Disposition"))

	// After it: the stream breaks off, so the client cannot take it for a
	// complete archive.
	b = setup(t, serverOpts{provisioner: brokenExport{written: append([]byte("PGDMP"), make([]byte, 64<<10)...)}})
	req, err := http.NewRequestWithContext(b.ctx, "GET", b.url+"/v1/tenants/exp-a/export", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, `attachment; filename="exp-a.dump"`, resp.Header.Get("Content-Disposition"))
	_, err = io.ReadAll(resp.Body)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

// Moves the API refuses: out of the tenant's region, to its own shard, to a
// shard that does not exist, and bodies that are not a move. Nothing moves.
func TestMoveTenantRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "stayer")
	for _, tc := range []struct {
		body   string
		status int
		code   string
	}{
		{`{"shard":"s2"}`, 409, "ECONFLICT"}, // s2 is in region us
		{`{"shard":"s1"}`, 409, "ECONFLICT"},
		{`{"shard":"nowhere"}`, 404, "ENOTFOUND"},
		{`{"shard":"Not A Name"}`, 422, "EINVALID"},
		{`{}`, 422, "EINVALID"},
		{`{"shard":"s2","extra":1}`, 400, "EMALFORMED"},
	} {
		r := b.do(t, "POST", "/v1/tenants/stayer/move", tc.body)
		require.Equal(t, tc.status, r.status, "%s: %s", tc.body, r.body)
		require.Equal(t, tc.code, string(r.problem(t).Code), tc.body)
	}
	r := b.do(t, "POST", "/v1/tenants/ghost/move", `{"shard":"s1"}`)
	require.Equal(t, 404, r.status)
	tn := decode[api.Tenant](t, b.do(t, "GET", "/v1/tenants/stayer", ""))
	require.Equal(t, "s1", tn.Shard)
	require.Equal(t, api.TenantStateActive, tn.State)
}

// size=true adds the size of the tenant's database, read on its shard;
// without it, or for a purged tenant, there is none.
func TestTenantSize(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "weighed")
	require.Equal(t, 200, b.query(t, "weighed", "INSERT INTO notes (title, body) SELECT 'n', repeat('x', 1000) FROM generate_series(1, 2000)").status)

	r := b.do(t, "GET", "/v1/tenants/weighed?size=true", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	got := decode[api.Tenant](t, r)
	require.NotNil(t, got.SizeBytes)
	conn, err := pgx.Connect(b.ctx, b.fleet.Shards[0].DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(b.ctx))
	var want int64
	require.NoError(t, conn.QueryRow(b.ctx, `SELECT pg_database_size($1)`, b.database(t, "weighed")).Scan(&want))
	require.InDelta(t, want, *got.SizeBytes, 256<<10, "the database's size on its shard")
	require.Greater(t, *got.SizeBytes, int64(2<<20), "the notes are in it")

	for _, path := range []string{"/v1/tenants/weighed", "/v1/tenants/weighed?size=false"} {
		r = b.do(t, "GET", path, "")
		require.Equal(t, 200, r.status)
		require.Nil(t, decode[api.Tenant](t, r).SizeBytes, path)
	}

	r = b.do(t, "DELETE", "/v1/tenants/weighed?purge=true&wait=30s", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	r = b.do(t, "GET", "/v1/tenants/weighed?size=true", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.Nil(t, decode[api.Tenant](t, r).SizeBytes, "a purged tenant has no database")

	r = b.do(t, "GET", "/v1/tenants/weighed?size=heavy", "")
	require.Equal(t, 400, r.status, "body: %s", r.body)
	require.Equal(t, api.ProblemCode(silo.EMALFORMED), r.problem(t).Code)
	r = b.do(t, "GET", "/v1/tenants/nope?size=true", "")
	require.Equal(t, 404, r.status, "body: %s", r.body)
}

// prefix narrows the list to ids that start with it, with the other
// filters and across pages; it is text, not a pattern.
func TestTenantListPrefix(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	for _, tn := range []silo.Tenant{
		{ID: "alpha", Shard: "s1", Region: "eu", State: silo.TenantActive},
		{ID: "alpine", Shard: "s2", Region: "us", State: silo.TenantActive},
		{ID: "alps", Shard: "s1", Region: "eu", State: silo.TenantSuspended},
		{ID: "beta", Shard: "s1", Region: "eu", State: silo.TenantActive},
		{ID: "balpha", Shard: "s1", Region: "eu", State: silo.TenantActive},
	} {
		tn.Database = "t_" + tn.ID
		_, err := b.store.CreateTenant(b.ctx, tn)
		require.NoError(t, err)
	}
	ids := func(query string) []string {
		t.Helper()
		r := b.do(t, "GET", "/v1/tenants?"+query, "")
		require.Equal(t, 200, r.status, "body: %s", r.body)
		out := []string{}
		for _, tn := range decode[api.TenantList](t, r).Items {
			out = append(out, tn.Id)
		}
		return out
	}
	require.Equal(t, []string{"alpha", "alpine", "alps"}, ids("prefix=alp"))
	require.Equal(t, []string{"alpha", "alps"}, ids("prefix=alp&shard=s1"))
	require.Equal(t, []string{"alps"}, ids("prefix=al&state=suspended"))
	require.Equal(t, []string{"alpine"}, ids("prefix=a&region=us"))
	require.Equal(t, []string{"alpha", "alpine", "alps", "balpha", "beta"}, ids("prefix="))
	for _, pattern := range []string{"%25", "_", "al%25", "a_p", ".*"} {
		require.Empty(t, ids("prefix="+pattern), "prefix %s", pattern)
	}

	var pages [][]string
	query := "prefix=alp&limit=2"
	for {
		r := b.do(t, "GET", "/v1/tenants?"+query, "")
		require.Equal(t, 200, r.status, "body: %s", r.body)
		list := decode[api.TenantList](t, r)
		page := []string{}
		for _, tn := range list.Items {
			page = append(page, tn.Id)
		}
		pages = append(pages, page)
		if list.NextCursor == nil {
			break
		}
		query = "prefix=alp&limit=2&cursor=" + url.QueryEscape(*list.NextCursor)
	}
	require.Equal(t, [][]string{{"alpha", "alpine"}, {"alps"}}, pages)
}
