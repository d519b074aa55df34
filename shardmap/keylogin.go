package shardmap

import (
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
)

// ScramIterations is the PBKDF2 iteration count of every key's SCRAM
// verifier. A key's secret is 256 random bits, which need no stretching
// (the shards' verifiers use 16, see ScramVerifier), but the clients of
// the wire-protocol endpoint are anyone's: 4,096 is RFC 7677's floor, which
// none refuses. The cost falls on the client, once per connection (about
// 1 ms); the endpoint's own side of the exchange is two HMACs.
const ScramIterations = 4096

// ScramSaltLen is the length of a tenant's SCRAM salt.
const ScramSaltLen = 16

// KeyVerifier verifies a SCRAM-SHA-256 proof of one key (RFC 5802):
// StoredKey = H(ClientKey) and ServerKey. Neither gives the key.
type KeyVerifier struct {
	KeyID     string
	StoredKey []byte
	ServerKey []byte
}

// NewKeyVerifier derives the verifier of password with salt and
// ScramIterations. The password is a key token: ASCII, which SASLprep
// leaves as it is.
func NewKeyVerifier(password string, salt []byte) (stored, server []byte) {
	salted, _ := pbkdf2.Key(sha256.New, password, salt, ScramIterations, sha256.Size) // fails only on FIPS-mode limits
	clientKey := hmacSHA256(salted, "Client Key")
	sum := sha256.Sum256(clientKey)
	return sum[:], hmacSHA256(salted, "Server Key")
}

// TenantLogin is what the wire-protocol endpoint needs to let a tenant's
// client in: the tenant's state, its SCRAM salt and the verifiers of its
// live keys.
type TenantLogin struct {
	TenantID  string
	State     silo.TenantState
	Salt      []byte // nil when the tenant has no key with a verifier
	Verifiers []KeyVerifier
	ReadAt    time.Time
}

// GetTenantLogin returns a tenant's state, salt and key verifiers (revoked
// keys and keys made before verifiers existed left out). It returns
// ENOTFOUND for an unknown tenant, and catalog errors as CatalogError.
func (s *Store) GetTenantLogin(ctx context.Context, tenantID string) (*TenantLogin, error) {
	// One round trip: the tenant's row, its salt, and each live key's
	// verifier (none: one row of NULLs).
	rows, err := s.pool.Query(ctx, `
		SELECT t.state, ks.salt, k.id, k.scram_stored_key, k.scram_server_key
		FROM tenants t
		LEFT JOIN tenant_key_salts ks ON ks.tenant_id = t.id
		LEFT JOIN tenant_keys k ON k.tenant_id = t.id AND k.revoked_at IS NULL AND k.scram_stored_key IS NOT NULL
		WHERE t.id = $1`, tenantID)
	if err != nil {
		return nil, CatalogError(err, "read the login of tenant %q", tenantID)
	}
	defer rows.Close()
	l := &TenantLogin{TenantID: tenantID, ReadAt: time.Now()}
	found := false
	for rows.Next() {
		var keyID *string
		var stored, server []byte
		if err := rows.Scan(&l.State, &l.Salt, &keyID, &stored, &server); err != nil {
			return nil, CatalogError(err, "read the login of tenant %q", tenantID)
		}
		found = true
		if keyID != nil {
			l.Verifiers = append(l.Verifiers, KeyVerifier{KeyID: *keyID, StoredKey: stored, ServerKey: server})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, CatalogError(err, "read the login of tenant %q", tenantID)
	}
	if !found {
		return nil, silo.Errorf(silo.ENOTFOUND, "tenant %q not found", tenantID)
	}
	return l, nil
}

// TouchKey records a key's use, at most once a minute (see
// AuthenticateKey); a failure is logged, never returned.
func (s *Store) TouchKey(ctx context.Context, keyID string) {
	_, err := s.pool.Exec(ctx, `
		UPDATE tenant_keys SET last_used_at = now()
		WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - $2::interval)`, keyID, lastUsedEvery)
	if err != nil {
		s.log.Warn("key last use not recorded", "key", keyID, "err", err)
	}
}

// tenantSalt returns the tenant's SCRAM salt, making it in tx if the
// tenant has none yet. Concurrent first keys agree: the insert of the
// second waits for the first's commit and then keeps its salt.
func tenantSalt(ctx context.Context, tx pgx.Tx, tenantID string) ([]byte, error) {
	salt := make([]byte, ScramSaltLen)
	_, _ = rand.Read(salt)
	if _, err := tx.Exec(ctx, `
		INSERT INTO tenant_key_salts (tenant_id, salt) VALUES ($1, $2)
		ON CONFLICT (tenant_id) DO NOTHING`, tenantID, salt); err != nil {
		return nil, err
	}
	var out []byte
	err := tx.QueryRow(ctx, `SELECT salt FROM tenant_key_salts WHERE tenant_id = $1`, tenantID).Scan(&out)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errors.New("the tenant's salt vanished")
	}
	return out, err
}
