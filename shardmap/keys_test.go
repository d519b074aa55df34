package shardmap_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// keyTenants registers a shard and active tenants with the given ids.
func keyTenants(t *testing.T, s *shardmap.Store, b *bundle, ids ...string) {
	t.Helper()
	_, err := s.CreateShard(b.ctx, silo.Shard{Name: "a", DSN: b.fleet.Shards[0].DSN("postgres")})
	require.NoError(t, err)
	for _, id := range ids {
		_, err := s.CreateTenant(b.ctx, silo.Tenant{ID: id, Shard: "a", Database: silo.DatabaseName(id), Region: "default", State: silo.TenantActive})
		require.NoError(t, err)
	}
}

const tokenPattern = `^silo_k_[a-z2-7]{12}_[a-z2-7]{52}$`

func TestTenantKeys(t *testing.T) {
	t.Parallel()
	s, b := setup(t)
	keyTenants(t, s, b, "acme", "globex")

	key, token, err := s.CreateTenantKey(b.ctx, "acme", "ci")
	require.NoError(t, err)
	require.Regexp(t, tokenPattern, token)
	require.True(t, shardmap.IsKeyToken(token))
	require.True(t, strings.HasPrefix(token, "silo_"+key.ID+"_"))
	require.Equal(t, "acme", key.TenantID)
	require.Equal(t, "ci", key.Name)
	require.Nil(t, key.RevokedAt)
	require.Nil(t, key.LastUsedAt)

	// The catalog keeps the secret's hash, never the secret; the audit
	// entry names the key and not its token.
	secret := token[len("silo_"+key.ID+"_"):]
	var stored []byte
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT secret_hash FROM tenant_keys WHERE id = $1`, key.ID).Scan(&stored))
	require.Len(t, stored, 32)
	require.NotContains(t, string(stored), secret)
	audit, err := s.ListAudit(b.ctx, shardmap.AuditFilter{Action: "tenant.key.create"}, silo.Page{})
	require.NoError(t, err)
	require.Len(t, audit.Items, 1)
	require.Equal(t, "tenant/acme", audit.Items[0].Target)
	require.Equal(t, map[string]any{"key": key.ID, "name": "ci"}, audit.Items[0].Params)
	require.NotContains(t, fmt.Sprint(audit.Items[0].Params), secret)
	require.NotContains(t, b.logs.String(), secret)

	got, err := s.AuthenticateKey(b.ctx, token)
	require.NoError(t, err)
	require.Equal(t, key.ID, got.ID)
	require.Equal(t, "acme", got.TenantID)
	got, err = s.AuthenticateKey(b.ctx, token)
	require.NoError(t, err)
	require.NotNil(t, got.LastUsedAt, "a use is recorded")

	// An empty name is the default; lists page in id order.
	second, _, err := s.CreateTenantKey(b.ctx, "acme", "")
	require.NoError(t, err)
	require.Equal(t, shardmap.DefaultKeyName, second.Name)
	other, otherToken, err := s.CreateTenantKey(b.ctx, "globex", "x")
	require.NoError(t, err)
	var ids []string
	p := silo.Page{Limit: 1}
	for {
		list, err := s.ListTenantKeys(b.ctx, "acme", p)
		require.NoError(t, err)
		require.LessOrEqual(t, len(list.Items), 1)
		for _, k := range list.Items {
			ids = append(ids, k.ID)
			require.Equal(t, "acme", k.TenantID)
		}
		if list.NextCursor == "" {
			break
		}
		p.Cursor = list.NextCursor
	}
	require.ElementsMatch(t, []string{key.ID, second.ID}, ids)
	require.IsIncreasing(t, ids)

	// A tenant cannot revoke another's key; a revoked key fails at once,
	// and revoking it again changes nothing.
	requireCode(t, s.RevokeTenantKey(b.ctx, "acme", other.ID), silo.ENOTFOUND)
	_, err = s.AuthenticateKey(b.ctx, otherToken)
	require.NoError(t, err)
	require.NoError(t, s.RevokeTenantKey(b.ctx, "acme", key.ID))
	_, err = s.AuthenticateKey(b.ctx, token)
	requireCode(t, err, silo.EUNAUTHORIZED)
	require.ErrorContains(t, err, "revoked")
	list, err := s.ListTenantKeys(b.ctx, "acme", silo.Page{})
	require.NoError(t, err)
	var revokedAt string
	for _, k := range list.Items {
		if k.ID == key.ID {
			require.NotNil(t, k.RevokedAt)
			revokedAt = k.RevokedAt.String()
		}
	}
	require.NoError(t, s.RevokeTenantKey(b.ctx, "acme", key.ID))
	list, err = s.ListTenantKeys(b.ctx, "acme", silo.Page{})
	require.NoError(t, err)
	for _, k := range list.Items {
		if k.ID == key.ID {
			require.Equal(t, revokedAt, k.RevokedAt.String(), "the first revocation's time is kept")
		}
	}
	audit, err = s.ListAudit(b.ctx, shardmap.AuditFilter{Action: "tenant.key.revoke"}, silo.Page{})
	require.NoError(t, err)
	var results []string
	for _, e := range audit.Items {
		results = append(results, e.Result)
	}
	require.Equal(t, []string{"ok", "ok", silo.ENOTFOUND}, results)
}

func TestAuthenticateKeyRefusals(t *testing.T) {
	t.Parallel()
	s, b := setup(t)
	keyTenants(t, s, b, "acme")
	key, token, err := s.CreateTenantKey(b.ctx, "acme", "ci")
	require.NoError(t, err)

	// Changing one character of the secret, or of the id, fails.
	last := token[len(token)-1]
	flipped := token[:len(token)-1] + string(map[bool]byte{true: 'b', false: 'a'}[last == 'a'])
	unknownID := strings.Replace(token, key.ID, "k_aaaaaaaaaaaa", 1)
	for _, bad := range []string{
		"", "silo_", "Bearer " + token, token + "a", token[:len(token)-1], strings.ToUpper(token),
		flipped, unknownID, "silo_" + key.ID, "test-admin-token-0123456789",
	} {
		_, err := s.AuthenticateKey(b.ctx, bad)
		requireCode(t, err, silo.EUNAUTHORIZED)
		require.Equal(t, "the key is not valid", silo.ErrorMessage(err), "token %q", bad)
	}
	require.False(t, shardmap.IsKeyToken("test-admin-token-0123456789"))
	require.False(t, shardmap.IsKeyToken(flipped[:20]))
}

func TestCreateTenantKeyBadInput(t *testing.T) {
	t.Parallel()
	s, b := setup(t)
	keyTenants(t, s, b, "acme", "gone")
	tn, err := s.GetTenant(b.ctx, "gone")
	require.NoError(t, err)
	tn.State = silo.TenantDeleted
	_, err = s.UpdateTenant(b.ctx, *tn)
	require.NoError(t, err)

	for _, tc := range []struct {
		tenant, name, code, detail string
	}{
		{"nope", "ci", silo.ENOTFOUND, `tenant "nope" not found`},
		{"gone", "ci", silo.ECONFLICT, "deleted"},
		{"acme", strings.Repeat("n", 65), silo.EINVALID, "longer than 64"},
		{"acme", "line\nbreak", silo.EINVALID, "control characters"},
		{"acme", "\xff", silo.EINVALID, "UTF-8"},
	} {
		_, token, err := s.CreateTenantKey(b.ctx, tc.tenant, tc.name)
		requireCode(t, err, tc.code)
		require.ErrorContains(t, err, tc.detail)
		require.Empty(t, token)
	}
	for _, id := range []string{"acme", "gone"} {
		list, err := s.ListTenantKeys(b.ctx, id, silo.Page{})
		require.NoError(t, err)
		require.Empty(t, list.Items, "bad input made no key")
	}
	_, err = s.ListTenantKeys(b.ctx, "nope", silo.Page{})
	requireCode(t, err, silo.ENOTFOUND)
	_, err = s.ListTenantKeys(b.ctx, "acme", silo.Page{Limit: 5000})
	requireCode(t, err, silo.EINVALID)
	requireCode(t, s.RevokeTenantKey(b.ctx, "acme", "k_aaaaaaaaaaaa"), silo.ENOTFOUND)

	audit, err := s.ListAudit(b.ctx, shardmap.AuditFilter{Action: "tenant.key.create"}, silo.Page{})
	require.NoError(t, err)
	require.Len(t, audit.Items, 5, "refusals are audited too")
	for _, e := range audit.Items {
		require.NotEqual(t, silo.AuditResultOK, e.Result)
	}
}
