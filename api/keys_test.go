package api_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
)

// createKey makes a key for tenant with the admin token and returns it.
func (b *bundle) createKey(t *testing.T, tenant, body string) api.TenantKeyCreated {
	t.Helper()
	r := b.do(t, "POST", "/v1/tenants/"+tenant+"/keys", body)
	require.Equal(t, 201, r.status, "body: %s", r.body)
	require.Equal(t, "no-store", r.header.Get("Cache-Control"), "the token must not be cached")
	return decode[api.TenantKeyCreated](t, r)
}

func TestTenantKeys(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "key-a")
	b.createTenant(t, "key-b")

	key := b.createKey(t, "key-a", `{"name":"billing"}`)
	require.Regexp(t, `^silo_k_[a-z2-7]{12}_[a-z2-7]{52}$`, key.Token)
	require.True(t, strings.HasPrefix(key.Token, "silo_"+key.Id+"_"))
	require.Equal(t, "billing", key.Name)
	secret := strings.TrimPrefix(key.Token, "silo_"+key.Id+"_")
	other := b.createKey(t, "key-a", `{}`)
	require.Equal(t, "default", other.Name)

	// The list shows the keys, never a token or a hash.
	r := b.do(t, "GET", "/v1/tenants/key-a/keys", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.NotContains(t, string(r.body), secret)
	require.NotContains(t, string(r.body), "token")
	require.NotContains(t, strings.ToLower(string(r.body)), "hash")
	list := decode[api.TenantKeyList](t, r)
	require.Len(t, list.Items, 2)
	byID := map[string]api.TenantKey{}
	for _, k := range list.Items {
		byID[k.Id] = k
	}
	require.Equal(t, "billing", byID[key.Id].Name)
	require.Nil(t, byID[key.Id].RevokedAt)
	r = b.do(t, "GET", "/v1/tenants/key-a/keys?limit=1", "")
	page := decode[api.TenantKeyList](t, r)
	require.Len(t, page.Items, 1)
	require.NotNil(t, page.NextCursor)
	r = b.do(t, "GET", "/v1/tenants/key-b/keys", "")
	require.Equal(t, 200, r.status)
	require.Empty(t, decode[api.TenantKeyList](t, r).Items)

	// The key reaches its tenant's data, and records its use.
	auth := "Bearer " + key.Token
	res := requireResult(t, b.queryAuth(t, auth, "key-a", `INSERT INTO notes (title) VALUES ('by key') RETURNING title`))
	require.Equal(t, []string{`"by key"`}, rowText(res.Rows[0]))
	r = b.doAuth(t, auth, "POST", "/v1/tenants/key-a/transaction", `{"statements":[{"sql":"SELECT count(*) FROM notes"}]}`)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	r = b.do(t, "GET", "/v1/tenants/key-a/keys", "")
	for _, k := range decode[api.TenantKeyList](t, r).Items {
		if k.Id == key.Id {
			require.NotNil(t, k.LastUsedAt)
		}
	}

	// Another tenant's data: 403, and nothing happens there.
	for _, path := range []string{"/v1/tenants/key-b/query", "/v1/tenants/key-b/transaction", "/v1/tenants/nope/query"} {
		body := `{"sql":"INSERT INTO notes (title) VALUES ('intruder')"}`
		if strings.HasSuffix(path, "transaction") {
			body = `{"statements":[` + body + `]}`
		}
		r = b.doAuth(t, auth, "POST", path, body)
		p := requireProblem(t, r, 403, silo.EFORBIDDEN)
		require.Contains(t, *p.Detail, "not valid for tenant")
	}
	res = requireResult(t, b.query(t, "key-b", `SELECT count(*) FROM notes`))
	require.Equal(t, []string{"0"}, rowText(res.Rows[0]))

	// Keys are good for the data API only.
	for _, req := range [][3]string{
		{"GET", "/v1/shards", ""},
		{"GET", "/v1/tenants", ""},
		{"GET", "/v1/tenants/key-a", ""},
		{"POST", "/v1/tenants/key-a/suspend", ""},
		{"GET", "/v1/tenants/key-a/export", ""},
		{"GET", "/v1/tenants/key-a/keys", ""},
		{"POST", "/v1/tenants/key-a/keys", `{}`},
		{"DELETE", "/v1/tenants/key-a/keys/" + other.Id, ""},
		{"GET", "/v1/audit", ""},
	} {
		r = b.doAuth(t, auth, req[0], req[1], req[2])
		p := requireProblem(t, r, 401, silo.EUNAUTHORIZED)
		require.Contains(t, *p.Detail, "needs the admin token", "%s %s", req[0], req[1])
		require.Contains(t, r.header.Get("WWW-Authenticate"), "Bearer")
	}
	tn, err := b.store.GetTenant(b.ctx, "key-a")
	require.NoError(t, err)
	require.Equal(t, silo.TenantActive, tn.State)

	// Revoked: 401 from now on, and revoking again changes nothing.
	r = b.do(t, "DELETE", "/v1/tenants/key-a/keys/"+key.Id, "")
	require.Equal(t, 204, r.status, "body: %s", r.body)
	p := requireProblem(t, b.queryAuth(t, auth, "key-a", `SELECT 1`), 401, silo.EUNAUTHORIZED)
	require.Contains(t, *p.Detail, "revoked")
	r = b.do(t, "DELETE", "/v1/tenants/key-a/keys/"+key.Id, "")
	require.Equal(t, 204, r.status, "body: %s", r.body)
	r = b.do(t, "GET", "/v1/tenants/key-a/keys", "")
	for _, k := range decode[api.TenantKeyList](t, r).Items {
		require.Equal(t, k.Id == key.Id, k.RevokedAt != nil)
	}
	requireResult(t, b.queryAuth(t, "Bearer "+other.Token, "key-a", `SELECT 1`))

	// The audit log records who made and revoked keys, never a token.
	r = b.do(t, "GET", "/v1/audit?target=tenant/key-a", "")
	require.Equal(t, 200, r.status)
	require.NotContains(t, string(r.body), secret)
	var actions []string
	for _, e := range decode[api.AuditList](t, r).Items {
		if strings.HasPrefix(e.Action, "tenant.key.") {
			actions = append(actions, e.Action+" "+e.Result)
			require.Equal(t, "admin", e.Actor)
		}
	}
	require.Equal(t, []string{"tenant.key.revoke ok", "tenant.key.revoke ok", "tenant.key.create ok", "tenant.key.create ok"}, actions)
}

func TestDataAuth(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "auth-a")
	key := b.createKey(t, "auth-a", `{}`)
	unknown := "silo_k_aaaaaaaaaaaa_" + strings.Repeat("a", 52)
	wrongSecret := key.Token[:len(key.Token)-1] + map[bool]string{true: "b", false: "a"}[strings.HasSuffix(key.Token, "a")]
	for _, tc := range []struct {
		auth, detail string
	}{
		{"", "an admin token or a tenant key is required: send Authorization: Bearer TOKEN"},
		{"Bearer ", "an admin token or a tenant key is required: send Authorization: Bearer TOKEN"},
		{"Basic " + key.Token, "an admin token or a tenant key is required: send Authorization: Bearer TOKEN"},
		{"Bearer nope", "the token is not valid"},
		{"Bearer " + unknown, "the key is not valid"},
		{"Bearer " + wrongSecret, "the key is not valid"},
		{"Bearer silo_" + key.Id, "the token is not valid"},
	} {
		r := b.queryAuth(t, tc.auth, "auth-a", `INSERT INTO notes (title) VALUES ('x')`)
		p := requireProblem(t, r, 401, silo.EUNAUTHORIZED)
		require.Equal(t, tc.detail, *p.Detail, "auth %q", tc.auth)
	}
	res := requireResult(t, b.query(t, "auth-a", `SELECT count(*) FROM notes`))
	require.Equal(t, []string{"0"}, rowText(res.Rows[0]), "refused requests ran nothing")
}

func TestTenantKeysBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "kb-a")
	r := b.do(t, "DELETE", "/v1/tenants/kb-a", "")
	require.Equal(t, 200, r.status, "body: %s", r.body)
	b.createTenant(t, "kb-b")

	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code, detail             string
	}{
		{"unknown tenant", "POST", "/v1/tenants/nope/keys", `{}`, 404, silo.ENOTFOUND, `tenant "nope" not found`},
		{"deleted tenant", "POST", "/v1/tenants/kb-a/keys", `{}`, 409, silo.ECONFLICT, "deleted"},
		{"empty name", "POST", "/v1/tenants/kb-b/keys", `{"name":""}`, 422, silo.EINVALID, "name must not be empty"},
		{"long name", "POST", "/v1/tenants/kb-b/keys", `{"name":"` + strings.Repeat("n", 65) + `"}`, 422, silo.EINVALID, "longer than 64"},
		{"control name", "POST", "/v1/tenants/kb-b/keys", `{"name":"a\u0007b"}`, 422, silo.EINVALID, "control"},
		{"unknown field", "POST", "/v1/tenants/kb-b/keys", `{"token":"mine"}`, 400, silo.EMALFORMED, "token"},
		{"no body", "POST", "/v1/tenants/kb-b/keys", ``, 400, silo.EMALFORMED, "empty"},
		{"list unknown", "GET", "/v1/tenants/nope/keys", "", 404, silo.ENOTFOUND, "nope"},
		{"list bad limit", "GET", "/v1/tenants/kb-b/keys?limit=0", "", 422, silo.EINVALID, "limit"},
		{"revoke unknown", "DELETE", "/v1/tenants/kb-b/keys/k_aaaaaaaaaaaa", "", 404, silo.ENOTFOUND, "not found"},
		{"no token", "GET", "/v1/tenants/kb-b/keys", "", 401, silo.EUNAUTHORIZED, "admin token is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth := "Bearer " + token
			if tc.code == silo.EUNAUTHORIZED {
				auth = ""
			}
			r := b.doAuth(t, auth, tc.method, tc.path, tc.body)
			p := requireProblem(t, r, tc.status, tc.code)
			require.Contains(t, *p.Detail, tc.detail)
		})
	}
	for _, id := range []string{"kb-a", "kb-b"} {
		r = b.do(t, "GET", "/v1/tenants/"+id+"/keys", "")
		require.Equal(t, 200, r.status)
		require.Empty(t, decode[api.TenantKeyList](t, r).Items, "bad input made no key")
	}
}

// A server without the wire-protocol endpoint refuses to hand out
// connection strings, and makes no key.
func TestConnectWithoutEndpoint(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addShards(t)
	b.createTenant(t, "conn-a")
	r := b.do(t, "POST", "/v1/tenants/conn-a/connect", `{}`)
	require.Equal(t, 409, r.status, "body: %s", r.body)
	require.Contains(t, string(r.body), "--pg-listen")
	r = b.do(t, "GET", "/v1/tenants/conn-a/keys", "")
	require.Empty(t, decode[api.TenantKeyList](t, r).Items)
	// Keys made now carry a SCRAM verifier, for the endpoint of any server.
	b.createKey(t, "conn-a", `{}`)
	login, err := b.store.GetTenantLogin(b.ctx, "conn-a")
	require.NoError(t, err)
	require.Len(t, login.Verifiers, 1)
	require.Len(t, login.Salt, 16)
}
