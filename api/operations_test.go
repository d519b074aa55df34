package api_test

import (
	"encoding/base64"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/shardmap"
)

// listOperations gets one page of /v1/operations with query q.
func (b *bundle) listOperations(t *testing.T, q string) api.OperationList {
	t.Helper()
	r := b.do(t, "GET", "/v1/operations"+q, "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	return decode[api.OperationList](t, r)
}

// opSummary is what the list tests compare: kind and tenant, in order.
func opSummary(ops []api.Operation) []string {
	out := []string{}
	for _, op := range ops {
		out = append(out, string(op.Kind)+" "+op.TenantId)
	}
	return out
}

// change posts a lifecycle request and waits for its operation to succeed.
func (b *bundle) change(t *testing.T, path, body string) {
	t.Helper()
	r := b.do(t, "POST", path, body)
	if r.status == 202 {
		require.Equal(t, api.OperationStateSucceeded, b.await(t, r.header.Get("Location")).State)
		return
	}
	require.Contains(t, []int{200, 201}, r.status, "body: %s", r.body)
}

// insertFailedOperation records a move of a tenant that does not exist as
// failed, as the history of a tenant purged long ago would hold it.
func (b *bundle) insertFailedOperation(t *testing.T, tenant string) string {
	t.Helper()
	id := uuid.NewString()
	steps := []silo.OperationStep{{Name: "copy", State: silo.OpFailed, Attempts: 1, StartedAt: time.Now(), Error: "the target shard is full"}}
	err := b.store.Mutate(b.ctx, "test.operation", "tenant/"+tenant, nil, func(tx pgx.Tx) error {
		if _, err := b.store.InsertOperation(b.ctx, tx, shardmap.NewOperation{ID: id, Kind: silo.OpMove, TenantID: tenant}); err != nil {
			return err
		}
		_, err := b.store.FinishOperation(b.ctx, tx, id, "", steps, silo.Errorf(silo.EUNAVAILABLE, "the target shard is full"))
		return err
	})
	require.NoError(t, err)
	return id
}

func TestListOperations(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.change(t, "/v1/tenants", `{"id":"ops-a","shard":"s1"}`)
	b.change(t, "/v1/tenants", `{"id":"ops-b","shard":"s2"}`)
	b.change(t, "/v1/tenants/ops-a/suspend", "")
	b.change(t, "/v1/tenants/ops-a/resume", "")
	failed := b.insertFailedOperation(t, "ops-gone")

	// Newest first, each as GET /v1/operations/{id} answers it.
	all := b.listOperations(t, "")
	require.Nil(t, all.NextCursor)
	require.Equal(t, []string{"move ops-gone", "resume ops-a", "suspend ops-a", "create ops-b", "create ops-a"}, opSummary(all.Items))
	require.Equal(t, failed, all.Items[0].Id)
	require.Equal(t, api.OperationStateFailed, all.Items[0].State)
	require.Equal(t, "EUNAVAILABLE", *all.Items[0].ErrorCode)
	require.Equal(t, "the target shard is full", *all.Items[0].Error)
	for _, op := range all.Items[1:] {
		require.Equal(t, api.OperationStateSucceeded, op.State)
		require.NotEmpty(t, op.Steps)
		require.NotNil(t, op.FinishedAt)
		got := decode[api.Operation](t, b.do(t, "GET", "/v1/operations/"+op.Id, ""))
		require.Equal(t, got, op)
	}

	// Filters, alone and together.
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"?tenant=ops-a", []string{"resume ops-a", "suspend ops-a", "create ops-a"}},
		{"?state=failed", []string{"move ops-gone"}},
		{"?state=succeeded&kind=create", []string{"create ops-b", "create ops-a"}},
		{"?kind=create", []string{"create ops-b", "create ops-a"}},
		{"?tenant=ops-a&kind=suspend&state=succeeded", []string{"suspend ops-a"}},
		{"?state=running", []string{}},
		{"?tenant=never-existed", []string{}},
	} {
		list := b.listOperations(t, tc.query)
		require.Equal(t, tc.want, opSummary(list.Items), tc.query)
		require.Nil(t, list.NextCursor, tc.query)
	}

	// Pages of 2 add up to the whole list, in order, with or without a
	// filter; the last page has no cursor.
	for _, filter := range []string{"", "&tenant=ops-a"} {
		var paged []api.Operation
		q := "?limit=2" + filter
		for pages := 1; ; pages++ {
			list := b.listOperations(t, q)
			require.LessOrEqual(t, len(list.Items), 2)
			paged = append(paged, list.Items...)
			if list.NextCursor == nil {
				break
			}
			require.Less(t, pages, 5, "the pages never end")
			q = "?limit=2" + filter + "&cursor=" + url.QueryEscape(*list.NextCursor)
		}
		want := b.listOperations(t, "?limit=500"+filter).Items
		require.Equal(t, want, paged, "filter %q", filter)
	}
	require.Len(t, b.listOperations(t, "?limit=3").Items, 3)
}

func TestListOperationsBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.insertFailedOperation(t, "ops-gone")
	audit, err := b.store.ListAudit(b.ctx, shardmap.AuditFilter{}, silo.Page{})
	require.NoError(t, err)

	otherCursor := base64.RawURLEncoding.EncodeToString([]byte("ops-gone"))
	for _, tc := range []struct{ query, detail string }{
		{"?state=done", `state "done"`},
		{"?state=", "state must not be empty"},
		{"?kind=frob", `kind "frob"`},
		{"?kind=", "kind must not be empty"},
		{"?tenant=Bad_Id", "tenant id"},
		{"?tenant=", "tenant must not be empty"},
		{"?limit=0", "limit 0 must be between 1 and 500"},
		{"?limit=501", "limit 501 must be between 1 and 500"},
		{"?limit=ten", "limit"},
		{"?cursor=%25%25", "cursor"},
		{"?cursor=" + otherCursor, "cursor"}, // a cursor of another list
	} {
		r := b.do(t, "GET", "/v1/operations"+tc.query, "")
		require.Equal(t, 400, r.status, "%s: %s", tc.query, r.body)
		p := r.problem(t)
		require.Equal(t, api.ProblemCode(silo.EMALFORMED), p.Code, tc.query)
		require.Contains(t, *p.Detail, tc.detail, tc.query)
	}

	// Without the admin token: 401, whatever else the request holds; a
	// tenant key is no admin token.
	key := "silo_k_" + strings.Repeat("a", 12) + "_" + strings.Repeat("b", 52)
	for auth, detail := range map[string]string{
		"":                              "an admin token is required",
		"Bearer wrong-token-0123456789": "not valid",
		"Bearer " + key:                 "needs the admin token",
	} {
		r := b.doAuth(t, auth, "GET", "/v1/operations?state=failed", "")
		require.Equal(t, 401, r.status, "auth %q", auth)
		p := r.problem(t)
		require.Equal(t, api.ProblemCode(silo.EUNAUTHORIZED), p.Code)
		require.Contains(t, *p.Detail, detail)
		require.NotContains(t, string(r.body), "ops-gone")
	}

	// Nothing changed: the one operation, and not an audit entry more.
	require.Len(t, b.listOperations(t, "").Items, 1)
	after, err := b.store.ListAudit(b.ctx, shardmap.AuditFilter{}, silo.Page{})
	require.NoError(t, err)
	require.Equal(t, audit, after)
}
