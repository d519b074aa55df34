package shardmap

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
)

// TenantKey is an API key of one tenant: a bearer token that reaches the
// tenant's data through the data API, and nothing else. Its secret is never
// stored; the catalog keeps its SHA-256.
type TenantKey struct {
	ID         string // "k_" and 12 base32 characters
	TenantID   string
	Name       string
	CreatedAt  time.Time
	RevokedAt  *time.Time
	LastUsedAt *time.Time // to the minute: see AuthenticateKey
}

// Key grammar: a token is KeyTokenPrefix, the key id, "_" and the secret.
// Ids and secrets are lowercase base32 (a-z, 2-7), so neither holds the
// separator and a token survives copying, URLs and shells unquoted.
const (
	KeyTokenPrefix = "silo_"
	DefaultKeyName = "default"
	MaxKeyNameLen  = 64
)

const (
	keyIDPrefix     = "k_"
	keyIDRandLen    = 12 // base32 characters: 60 bits
	keyIDLen        = len(keyIDPrefix) + keyIDRandLen
	keySecretBytes  = 32                         // 256 bits
	keySecretLength = (keySecretBytes*8 + 4) / 5 // unpadded base32 characters
	lastUsedEvery   = time.Minute
	keyColumns      = `id, tenant_id, name, created_at, revoked_at, last_used_at`
)

var keyEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

func randomBase32(nBytes int) string {
	b := make([]byte, nBytes)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return strings.ToLower(keyEncoding.EncodeToString(b))
}

// parseKeyToken splits a token into its key id and secret; ok is false when
// the token does not have the grammar of a key.
func parseKeyToken(token string) (id, secret string, ok bool) {
	rest, ok := strings.CutPrefix(token, KeyTokenPrefix)
	if !ok || len(rest) != keyIDLen+1+keySecretLength || rest[keyIDLen] != '_' {
		return "", "", false
	}
	id, secret = rest[:keyIDLen], rest[keyIDLen+1:]
	if !strings.HasPrefix(id, keyIDPrefix) || !isBase32(id[len(keyIDPrefix):]) || !isBase32(secret) {
		return "", "", false
	}
	return id, secret, true
}

func isBase32(s string) bool {
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '2' || r > '7') {
			return false
		}
	}
	return true
}

// IsKeyToken reports whether token has the grammar of a tenant key token,
// valid or not.
func IsKeyToken(token string) bool {
	_, _, ok := parseKeyToken(token)
	return ok
}

func hashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

func validateKeyName(name string) error {
	switch {
	case !utf8.ValidString(name):
		return silo.Errorf(silo.EINVALID, "key name must be valid UTF-8")
	case name == "":
		return silo.Errorf(silo.EINVALID, "key name must not be empty")
	case utf8.RuneCountInString(name) > MaxKeyNameLen:
		return silo.Errorf(silo.EINVALID, "key name is longer than %d characters", MaxKeyNameLen)
	case strings.ContainsFunc(name, unicode.IsControl):
		return silo.Errorf(silo.EINVALID, "key name must not hold control characters")
	}
	return nil
}

func scanKey(row pgx.Row) (TenantKey, error) {
	var k TenantKey
	err := row.Scan(&k.ID, &k.TenantID, &k.Name, &k.CreatedAt, &k.RevokedAt, &k.LastUsedAt)
	return k, err
}

// CreateTenantKey makes an API key for a tenant and returns it with its
// token, which is not stored and cannot be read again. An empty name is
// DefaultKeyName. It returns ENOTFOUND for an unknown tenant, ECONFLICT for
// a deleted or purged one, and EINVALID for a bad name. The audit entry
// names the key, never its token.
func (s *Store) CreateTenantKey(ctx context.Context, tenantID, name string) (*TenantKey, string, error) {
	if name == "" {
		name = DefaultKeyName
	}
	id := keyIDPrefix + randomBase32(8)[:keyIDRandLen]
	secret := randomBase32(keySecretBytes)
	params := map[string]any{"key": id, "name": name}
	var out TenantKey
	err := s.Mutate(ctx, "tenant.key.create", "tenant/"+tenantID, params, func(tx pgx.Tx) error {
		if err := validateKeyName(name); err != nil {
			return err
		}
		// The key-share lock keeps the tenant's state until the key is in.
		var state silo.TenantState
		err := tx.QueryRow(ctx, `SELECT state FROM tenants WHERE id = $1 FOR KEY SHARE`, tenantID).Scan(&state)
		if errors.Is(err, pgx.ErrNoRows) {
			return silo.Errorf(silo.ENOTFOUND, "tenant %q not found", tenantID)
		}
		if err != nil {
			return CatalogError(err, "look up tenant %q", tenantID)
		}
		if state == silo.TenantDeleted || state == silo.TenantPurged {
			return silo.Errorf(silo.ECONFLICT, "tenant %q is %s: it can have no new keys", tenantID, state)
		}
		// The SCRAM verifier lets the key log in to the wire-protocol
		// endpoint; it is derived from the whole token, which is what a
		// client sends as its password.
		salt, err := tenantSalt(ctx, tx, tenantID)
		if err != nil {
			return CatalogError(err, "make the SCRAM salt of tenant %q", tenantID)
		}
		stored, server := NewKeyVerifier(KeyTokenPrefix+id+"_"+secret, salt)
		out, err = scanKey(tx.QueryRow(ctx, `
			INSERT INTO tenant_keys (id, tenant_id, name, secret_hash, scram_stored_key, scram_server_key)
			VALUES ($1, $2, $3, $4, $5, $6)
			RETURNING `+keyColumns,
			id, tenantID, name, hashSecret(secret), stored, server))
		return CatalogError(err, "create key for tenant %q", tenantID)
	})
	if err != nil {
		return nil, "", err
	}
	return &out, KeyTokenPrefix + id + "_" + secret, nil
}

// ListTenantKeys returns one page of a tenant's keys, revoked ones included,
// ordered by id. It returns ENOTFOUND for an unknown tenant and EINVALID for
// a bad limit or cursor.
func (s *Store) ListTenantKeys(ctx context.Context, tenantID string, p silo.Page) (silo.List[TenantKey], error) {
	limit, after, err := page(p)
	if err != nil {
		return silo.List[TenantKey]{}, err
	}
	var exists bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)`, tenantID).Scan(&exists); err != nil {
		return silo.List[TenantKey]{}, CatalogError(err, "look up tenant %q", tenantID)
	}
	if !exists {
		return silo.List[TenantKey]{}, silo.Errorf(silo.ENOTFOUND, "tenant %q not found", tenantID)
	}
	// Served by tenant_keys (tenant_id, id).
	rows, err := s.pool.Query(ctx, `
		SELECT `+keyColumns+` FROM tenant_keys
		WHERE tenant_id = $1 AND id > $2
		ORDER BY id LIMIT $3`, tenantID, after, limit+1)
	if err != nil {
		return silo.List[TenantKey]{}, CatalogError(err, "list keys of tenant %q", tenantID)
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TenantKey, error) { return scanKey(r) })
	if err != nil {
		return silo.List[TenantKey]{}, CatalogError(err, "list keys of tenant %q", tenantID)
	}
	return collectPage(items, limit, func(k TenantKey) string { return k.ID }), nil
}

// RevokeTenantKey revokes a tenant's key: requests that send it fail from
// now on. Revoking a revoked key changes nothing. It returns ENOTFOUND when
// the tenant has no such key.
func (s *Store) RevokeTenantKey(ctx context.Context, tenantID, keyID string) error {
	params := map[string]any{"key": keyID}
	return s.Mutate(ctx, "tenant.key.revoke", "tenant/"+tenantID, params, func(tx pgx.Tx) error {
		var revoked bool
		// The first revocation's time is kept.
		err := tx.QueryRow(ctx, `
			UPDATE tenant_keys SET revoked_at = COALESCE(revoked_at, now())
			WHERE id = $1 AND tenant_id = $2
			RETURNING true`, keyID, tenantID).Scan(&revoked)
		if errors.Is(err, pgx.ErrNoRows) {
			return silo.Errorf(silo.ENOTFOUND, "key %q of tenant %q not found", keyID, tenantID)
		}
		return CatalogError(err, "revoke key %q of tenant %q", keyID, tenantID)
	})
}

// AuthenticateKey returns the key a token belongs to, for its TenantID. It
// returns EUNAUTHORIZED for a token that is not a key's, a wrong secret and
// a revoked key, and catalog errors as EUNAVAILABLE or ETIMEOUT. The secret
// is compared by its SHA-256, in constant time. A key's LastUsedAt is
// brought up to date at most once a minute, so that authenticating is a
// read on most requests; that bookkeeping is not audited.
func (s *Store) AuthenticateKey(ctx context.Context, token string) (*TenantKey, error) {
	id, secret, ok := parseKeyToken(token)
	if !ok {
		return nil, silo.Errorf(silo.EUNAUTHORIZED, "the key is not valid")
	}
	var hash []byte
	var k TenantKey
	err := s.pool.QueryRow(ctx, `SELECT `+keyColumns+`, secret_hash FROM tenant_keys WHERE id = $1`, id).
		Scan(&k.ID, &k.TenantID, &k.Name, &k.CreatedAt, &k.RevokedAt, &k.LastUsedAt, &hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, silo.Errorf(silo.EUNAUTHORIZED, "the key is not valid")
	}
	if err != nil {
		return nil, CatalogError(err, "authenticate key %q", id)
	}
	if subtle.ConstantTimeCompare(hashSecret(secret), hash) != 1 {
		return nil, silo.Errorf(silo.EUNAUTHORIZED, "the key is not valid")
	}
	// Only the key's holder learns that it was revoked.
	if k.RevokedAt != nil {
		return nil, silo.Errorf(silo.EUNAUTHORIZED, "the key %s was revoked", k.ID)
	}
	if k.LastUsedAt == nil || time.Since(*k.LastUsedAt) > lastUsedEvery {
		_, err := s.pool.Exec(ctx, `UPDATE tenant_keys SET last_used_at = now() WHERE id = $1`, k.ID)
		if err != nil {
			s.log.Warn("key last use not recorded", "key", k.ID, "err", err)
		}
	}
	return &k, nil
}
