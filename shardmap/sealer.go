package shardmap

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/silo-db/silo"
)

// SecretKeyLen is the length of SILO_SECRET_KEY once hex-decoded: AES-256.
const SecretKeyLen = 32

// sealVersion prefixes every sealed value, so the format can change.
const sealVersion = 1

// Sealer encrypts secrets kept in the catalog (tenant role passwords) with
// AES-256-GCM. Each value is bound to its owner (the additional data), so a
// sealed password copied to another tenant's row does not open. A Sealer is
// safe for concurrent use.
type Sealer struct {
	aead cipher.AEAD
}

// ParseSecretKey decodes a hex SILO_SECRET_KEY of SecretKeyLen bytes.
func ParseSecretKey(s string) ([]byte, error) {
	key, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(key) != SecretKeyLen {
		return nil, fmt.Errorf("the secret key must be %d hex characters (%d random bytes), e.g. from `openssl rand -hex %d`", 2*SecretKeyLen, SecretKeyLen, SecretKeyLen)
	}
	return key, nil
}

// NewSealer returns a Sealer for a SecretKeyLen-byte key.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != SecretKeyLen {
		return nil, fmt.Errorf("secret key is %d bytes, want %d", len(key), SecretKeyLen)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plaintext for owner.
func (s *Sealer) Seal(plaintext []byte, owner string) []byte {
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	out[0] = sealVersion
	_, _ = rand.Read(out[1:])
	return s.aead.Seal(out, out[1:], plaintext, []byte(owner))
}

// Open decrypts a value sealed for owner. It returns EINTERNAL when the
// value was sealed under another key or for another owner.
func (s *Sealer) Open(sealed []byte, owner string) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < 1+n || sealed[0] != sealVersion {
		return nil, silo.Errorf(silo.EINTERNAL, "a sealed secret of %s is malformed", owner)
	}
	plain, err := s.aead.Open(nil, sealed[1:1+n], sealed[1+n:], []byte(owner))
	if err != nil {
		return nil, silo.WrapError(errors.New("aead open failed"), silo.EINTERNAL,
			"the secret of %s does not open with this SILO_SECRET_KEY", owner)
	}
	return plain, nil
}
