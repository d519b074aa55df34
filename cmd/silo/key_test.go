package main

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/api"
)

func TestDevTenantKeys(t *testing.T) {
	t.Parallel()
	dir := devDir(t)
	ctx := context.Background()
	var out, errOut syncBuffer
	stop := background(t, &out, &errOut, "dev", "--dir", dir, "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0", "--shards", "1", "--warm-pool-size", "0")
	url, token := waitEnv(t, dir, stop)
	silo := func(args ...string) (string, string, error) {
		t.Helper()
		return runSiloStderr(t, ctx, append(args, "--url", url, "--token", token)...)
	}
	_, _, err := silo("tenant", "create", "acme")
	require.NoError(t, err)

	// Create prints the token alone on stdout, and the warning on stderr.
	got, stderr, err := silo("tenant", "key", "create", "acme", "--name", "billing")
	require.NoError(t, err)
	require.Regexp(t, `^silo_k_[a-z2-7]{12}_[a-z2-7]{52}\n$`, got)
	keyToken := strings.TrimSpace(got)
	keyID := keyToken[len("silo_") : len("silo_")+len("k_")+12]
	require.Regexp(t, `^Key `+keyID+` \(billing\) of tenant acme is made\. Its token, above, will not be shown again: `, stderr)

	// -o json: the API's object, the token included.
	got, _, err = silo("tenant", "key", "create", "acme", "-o", "json")
	require.NoError(t, err)
	require.Equal(t, []string{"createdAt", "id", "name", "token"}, jsonKeys(t, got))
	var second api.TenantKeyCreated
	require.NoError(t, json.Unmarshal([]byte(got), &second))
	require.Equal(t, "default", second.Name)

	// List: both keys, never a token.
	got, _, err = silo("tenant", "key", "list", "acme")
	require.NoError(t, err)
	require.Regexp(t, keyListRE, got)
	require.Regexp(t, `(?m)^`+keyID+`\s+billing\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s*$`, got)
	require.NotContains(t, got, "silo_")
	got, _, err = silo("tenant", "key", "list", "acme", "-o", "json")
	require.NoError(t, err)
	var keys []api.TenantKey
	require.NoError(t, json.Unmarshal([]byte(got), &keys), got)
	require.Len(t, keys, 2)
	ids := []string{keys[0].Id, keys[1].Id}
	require.True(t, slices.Contains(ids, keyID) && slices.Contains(ids, second.Id))
	require.NotContains(t, got, "token")

	// The key is no admin token.
	_, err = runSilo(t, ctx, "", "tenant", "list", "--url", url, "--token", keyToken)
	require.ErrorContains(t, err, "(EUNAUTHORIZED)")
	_, err = runSilo(t, ctx, "", "tenant", "key", "create", "acme", "--url", url, "--token", keyToken)
	require.ErrorContains(t, err, "(EUNAUTHORIZED)")

	// Revoke: listed as revoked; a second time changes nothing.
	got, _, err = silo("tenant", "key", "revoke", "acme", keyID)
	require.NoError(t, err)
	require.Equal(t, "key "+keyID+" of tenant acme revoked\n", got)
	got, _, err = silo("tenant", "key", "revoke", "acme", keyID, "-o", "json")
	require.NoError(t, err)
	require.JSONEq(t, `{"revoked":"`+keyID+`","tenant":"acme"}`, got)
	got, _, err = silo("tenant", "key", "list", "acme", "-o", "json")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal([]byte(got), &keys))
	for _, k := range keys {
		require.Equal(t, k.Id == keyID, k.RevokedAt != nil, "key %s", k.Id)
	}

	// Errors: one line with the code, and nothing made.
	_, _, err = silo("tenant", "key", "create", "nope")
	require.ErrorContains(t, err, `tenant "nope" not found (ENOTFOUND)`)
	_, _, err = silo("tenant", "key", "create", "acme", "--name", "")
	require.ErrorContains(t, err, "name must not be empty")
	require.ErrorContains(t, err, "(EINVALID)")
	_, _, err = silo("tenant", "key", "revoke", "acme", "k_aaaaaaaaaaaa")
	require.ErrorContains(t, err, "(ENOTFOUND)")
	_, _, err = silo("tenant", "key", "list", "nope")
	require.ErrorContains(t, err, "(ENOTFOUND)")
	got, _, err = silo("tenant", "key", "list", "acme", "-o", "json")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal([]byte(got), &keys))
	require.Len(t, keys, 2)

	// The audit log has the changes, and no token.
	got, _, err = silo("audit", "-o", "json", "--target", "tenant/acme")
	require.NoError(t, err)
	require.NotContains(t, got, keyToken[len(keyToken)-52:])
	var audit []api.AuditEntry
	require.NoError(t, json.Unmarshal([]byte(got), &audit))
	var actions []string
	for _, e := range audit {
		if strings.HasPrefix(e.Action, "tenant.key.") {
			actions = append(actions, e.Action+" "+e.Result)
		}
	}
	require.Equal(t, []string{
		"tenant.key.revoke ENOTFOUND", "tenant.key.revoke ok",
		"tenant.key.revoke ok", "tenant.key.create ok", "tenant.key.create ok",
	}, actions)
	require.NoError(t, stop())
	require.NotContains(t, out.String()+errOut.String(), keyToken[len(keyToken)-52:], "tokens are never logged")
}
