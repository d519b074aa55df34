package api_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/router"
)

// A shard that goes down: its tenants get 503 with Retry-After, from the
// shard's breaker, within a few seconds; a tenant on another shard is
// served throughout. The shard is a cluster of this test's own.
func TestDataAPIShardDown(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	dir, err := os.MkdirTemp("", "api-shard-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	down, err := pgcluster.Start(b.ctx, pgcluster.Config{Dir: filepath.Join(dir, "down"), Fast: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = down.Stop(context.Background()) })
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: "down", DSN: down.DSN("postgres")})
	require.NoError(t, err)

	r := b.do(t, "POST", "/v1/tenants?wait=30s", `{"id":"doomed","shard":"down"}`)
	require.Equal(t, 201, r.status, "body: %s", r.body)
	b.createTenant(t, "steady-one")
	require.Equal(t, 200, b.query(t, "doomed", "SELECT 1").status)

	require.NoError(t, down.Stop(b.ctx))
	var got response
	require.Eventually(t, func() bool {
		got = b.query(t, "doomed", "SELECT 1")
		return got.status == 503 && got.header.Get("Retry-After") != ""
	}, 10*time.Second, 100*time.Millisecond)
	require.Equal(t, "EUNAVAILABLE", string(got.problem(t).Code))
	secs, err := strconv.Atoi(got.header.Get("Retry-After"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, secs, 1)
	require.Equal(t, 200, b.query(t, "steady-one", "SELECT 1").status, "other shards are served")

	// The shard endpoints say whose breaker is open, once the prober has
	// found the shard down too; a size cannot be read.
	b.awaitPool(t, "down", func(p *api.ShardPool) bool { return p != nil && p.BreakerOpen }, "the breaker opens")
	r = b.do(t, "GET", "/v1/shards/s1", "")
	require.False(t, decode[api.Shard](t, r).Pool.BreakerOpen)
	r = b.do(t, "GET", "/v1/tenants/doomed?size=true", "")
	require.Equal(t, 503, r.status, "body: %s", r.body)
	require.Equal(t, "EUNAVAILABLE", string(r.problem(t).Code))
	require.Contains(t, *r.problem(t).Detail, `shard "down" is unavailable`)
}

// A shard that hangs lets go of the data API's calls in flight on it: when
// its breaker opens, within the router's default detection time of 5 s, a
// query and a transaction that wait on it answer 503 with Retry-After
// instead of waiting out the 30 s query timeout. Once the shard is back,
// its tenant is served again.
func TestDataAPIHungShardLetsGo(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	dir, err := os.MkdirTemp("", "api-shard-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	hung, err := pgcluster.Start(b.ctx, pgcluster.Config{Dir: filepath.Join(dir, "hung"), Fast: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = hung.Resume(); _ = hung.Stop(context.Background()) })
	_, err = b.store.CreateShard(b.ctx, silo.Shard{Name: "hung", DSN: hung.DSN("postgres")})
	require.NoError(t, err)
	r := b.do(t, "POST", "/v1/tenants?wait=30s", `{"id":"held","shard":"hung"}`)
	require.Equal(t, 201, r.status, "body: %s", r.body)
	require.Equal(t, 200, b.query(t, "held", "SELECT 1").status)
	const detection = router.DefaultProbeInterval + 2*router.DefaultProbeTimeout

	type call struct{ path, body string }
	calls := []call{
		{"/v1/tenants/held/query", `{"sql":"SELECT pg_sleep(60)"}`},
		{"/v1/tenants/held/transaction", `{"statements":[{"sql":"INSERT INTO notes (title) VALUES ('cut off')"},{"sql":"SELECT pg_sleep(60)"}]}`},
	}
	type outcome struct {
		call
		resp response
		err  error
		at   time.Time
	}
	done := make(chan outcome, len(calls))
	for _, c := range calls {
		go func() {
			resp, err := b.send("Bearer "+token, "POST", c.path, c.body)
			done <- outcome{c, resp, err, time.Now()}
		}()
	}
	admin, err := pgx.Connect(b.ctx, hung.DSN("postgres"))
	require.NoError(t, err)
	defer admin.Close(context.Background())
	require.Eventually(t, func() bool {
		var n int
		err := admin.QueryRow(b.ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = $1 AND state = 'active' AND strpos(query, 'pg_sleep(60)') > 0`, b.database(t, "held")).Scan(&n)
		return err == nil && n == len(calls)
	}, 30*time.Second, 20*time.Millisecond, "both calls run on the shard")

	require.NoError(t, hung.Pause())
	frozen := time.Now()
	for range calls {
		select {
		case o := <-done:
			require.NoError(t, o.err)
			took := o.at.Sub(frozen)
			t.Logf("%s answered %d after %v", o.path, o.resp.status, took.Round(10*time.Millisecond))
			b.validate(t, "POST", o.path, o.body, o.resp)
			require.Equal(t, 503, o.resp.status, "body: %s", o.resp.body)
			require.Equal(t, "EUNAVAILABLE", string(o.resp.problem(t).Code))
			secs, err := strconv.Atoi(o.resp.header.Get("Retry-After"))
			require.NoError(t, err)
			require.GreaterOrEqual(t, secs, 1)
			require.Contains(t, *o.resp.problem(t).Detail, "cut off")
			require.Less(t, took, detection+3*time.Second, "%s: within the detection time, and some slack", o.path)
		case <-time.After(time.Minute):
			t.Fatal("calls in flight on the hung shard still wait")
		}
	}

	require.NoError(t, hung.Resume())
	require.Eventually(t, func() bool {
		resp, err := b.send("Bearer "+token, "POST", "/v1/tenants/held/query", `{"sql":"SELECT count(*) AS n FROM notes WHERE title = 'cut off'"}`)
		return err == nil && resp.status == 200
	}, 20*time.Second, 100*time.Millisecond, "served again once the shard is back")
	got := b.query(t, "held", "SELECT count(*) AS n FROM notes WHERE title = 'cut off'")
	require.Equal(t, 200, got.status, "body: %s", got.body)
	require.JSONEq(t, `{"columns":["n"],"rows":[[0]],"rowsAffected":1,"truncated":false}`, string(got.body), "the transaction was rolled back")
}

// A shard's pool in GET /v1/shards: absent until this server serves one of
// its tenants, then its connections in use while a query runs and idle
// after, as /metrics counts them.
func TestShardPool(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "pooled")
	shard := func(name string) api.Shard {
		t.Helper()
		r := b.do(t, "GET", "/v1/shards/"+name, "")
		require.Equal(t, 200, r.status, "body: %s", r.body)
		return decode[api.Shard](t, r)
	}
	require.Nil(t, shard("s1").Pool, "no tenant of s1 served yet")

	done := make(chan response, 1)
	go func() {
		r, _ := b.send("Bearer "+token, "POST", "/v1/tenants/pooled/query", `{"sql":"SELECT pg_sleep(3)"}`)
		done <- r
	}()
	b.awaitPool(t, "s1", func(p *api.ShardPool) bool { return p != nil && p.ConnectionsInUse == 1 }, "the query's connection is in use")
	require.False(t, shard("s1").Pool.BreakerOpen)
	r := b.do(t, "GET", "/v1/shards", "")
	for _, sh := range decode[api.ShardList](t, r).Items {
		if sh.Name == "s1" {
			require.Equal(t, &api.ShardPool{ConnectionsInUse: 1}, sh.Pool)
		} else {
			require.Nil(t, sh.Pool, "shard %s", sh.Name)
		}
	}
	select {
	case r := <-done:
		require.Equal(t, 200, r.status, "body: %s", r.body)
	case <-time.After(30 * time.Second):
		t.Fatal("the query did not end")
	}
	require.Equal(t, &api.ShardPool{ConnectionsIdle: 1}, shard("s1").Pool, "the connection went back idle")
}

// awaitPool polls a shard until its pool is as cond wants, for 10 s at most.
func (b *bundle) awaitPool(t *testing.T, shard string, cond func(*api.ShardPool) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := b.do(t, "GET", "/v1/shards/"+shard, "")
		require.Equal(t, 200, r.status, "body: %s", r.body)
		if cond(decode[api.Shard](t, r).Pool) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("shard %s: not within 10s: %s; last: %s", shard, what, r.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
