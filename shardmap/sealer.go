package shardmap

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/silo-db/silo"
)

// SecretKeyLen is the length of SILO_SECRET_KEY once hex-decoded: AES-256.
const SecretKeyLen = 32

// The sealed formats. The first byte of a sealed value says which:
//
//	1: version, nonce, ciphertext. Silo 1 wrote it; it names no key, so
//	   Open tries each key it has.
//	2: version, key id (KeyIDLen bytes), nonce, ciphertext. The version and
//	   key id are authenticated with the owner, so neither can be changed.
const (
	sealV1 = 1
	sealV2 = 2
)

// KeyIDLen is the length of a key id in a sealed value: the first bytes of
// the SHA-256 of the key. It names a key without revealing it.
const KeyIDLen = 4

// Sealer encrypts secrets kept in the catalog (tenant role passwords, shard
// DSNs) with AES-256-GCM. Each value is bound to its owner (the additional
// data: a tenant id, or "shard/NAME"), so a sealed value copied to another
// row does not open.
//
// A Sealer has a current key, which seals, and may have previous keys, which
// only open: SILO_SECRET_KEY can be rotated without a moment when values
// sealed under the old key cannot be read. A Sealer is safe for concurrent
// use.
type Sealer struct {
	current  sealKey
	previous []sealKey
}

type sealKey struct {
	id   [KeyIDLen]byte
	aead cipher.AEAD
}

// KeyID returns the id of a key as it is shown: the hex of the first
// KeyIDLen bytes of its SHA-256. For a hex key in $K, `echo -n $K | xxd -r
// -p | sha256sum | cut -c1-8` gives the same.
func KeyID(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:KeyIDLen])
}

// ParseSecretKey decodes a hex SILO_SECRET_KEY of SecretKeyLen bytes.
func ParseSecretKey(s string) ([]byte, error) {
	key, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(key) != SecretKeyLen {
		return nil, fmt.Errorf("the secret key must be %d hex characters (%d random bytes), e.g. from `openssl rand -hex %d`", 2*SecretKeyLen, SecretKeyLen, SecretKeyLen)
	}
	return key, nil
}

// ParseKeyRing decodes the current hex key and the previous ones into a key
// ring for NewSealer: the current key followed by each previous key, each
// SecretKeyLen bytes. A previous key equal to the current one, or given
// twice, is dropped. Errors name the key by position, never by value.
func ParseKeyRing(current string, previous []string) ([]byte, error) {
	ring, err := ParseSecretKey(current)
	if err != nil {
		return nil, err
	}
	for i, p := range previous {
		if strings.TrimSpace(p) == "" {
			continue
		}
		key, err := ParseSecretKey(p)
		if err != nil {
			return nil, fmt.Errorf("previous key %d of %d: %w", i+1, len(previous), err)
		}
		if !containsKey(ring, key) {
			ring = append(ring, key...)
		}
	}
	return ring, nil
}

func containsKey(ring, key []byte) bool {
	for k := range slices.Chunk(ring, SecretKeyLen) {
		if bytes.Equal(k, key) {
			return true
		}
	}
	return false
}

// NewSealer returns a Sealer for a key ring: one SecretKeyLen-byte key, the
// current one, optionally followed by previous keys of the same length
// (ParseKeyRing makes one). The current key seals; every key opens.
func NewSealer(ring []byte) (*Sealer, error) {
	if len(ring) == 0 || len(ring)%SecretKeyLen != 0 {
		return nil, fmt.Errorf("secret key is %d bytes, want %d (or a multiple, for a key ring)", len(ring), SecretKeyLen)
	}
	var s Sealer
	seen := map[[KeyIDLen]byte]bool{}
	for key := range slices.Chunk(ring, SecretKeyLen) {
		k, err := newSealKey(key)
		if err != nil {
			return nil, err
		}
		if seen[k.id] {
			// Two different keys with one id (or one key twice): a sealed
			// value could not say which key opens it.
			return nil, fmt.Errorf("two secret keys have the same id %x: use another key", k.id)
		}
		seen[k.id] = true
		if s.current.aead == nil {
			s.current = k
		} else {
			s.previous = append(s.previous, k)
		}
	}
	return &s, nil
}

func newSealKey(key []byte) (sealKey, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return sealKey{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return sealKey{}, err
	}
	k := sealKey{aead: aead}
	sum := sha256.Sum256(key)
	copy(k.id[:], sum[:KeyIDLen])
	return k, nil
}

// KeyID returns the id of the current key, the one Seal uses.
func (s *Sealer) KeyID() string { return hex.EncodeToString(s.current.id[:]) }

// PreviousKeyIDs returns the ids of the keys that only open.
func (s *Sealer) PreviousKeyIDs() []string {
	ids := make([]string, len(s.previous))
	for i, k := range s.previous {
		ids[i] = hex.EncodeToString(k.id[:])
	}
	return ids
}

// v2 header: version and key id; the nonce follows.
const headerV2 = 1 + KeyIDLen

// Seal encrypts plaintext for owner under the current key, in the current
// format.
func (s *Sealer) Seal(plaintext []byte, owner string) []byte {
	k := s.current
	n := k.aead.NonceSize()
	out := make([]byte, headerV2+n, headerV2+n+len(plaintext)+k.aead.Overhead())
	out[0] = sealV2
	copy(out[1:], k.id[:])
	_, _ = rand.Read(out[headerV2:])
	return k.aead.Seal(out, out[headerV2:], plaintext, additionalData(out[:headerV2], owner))
}

// additionalData binds a value to its header and owner.
func additionalData(header []byte, owner string) []byte {
	return append(bytes.Clone(header), owner...)
}

// Open decrypts a value sealed for owner, in either format, under the
// current key or a previous one. It returns EINTERNAL when the value is
// malformed, was sealed under a key this Sealer does not have (the message
// names the key's id), or for another owner. Messages never include the
// secret.
func (s *Sealer) Open(sealed []byte, owner string) ([]byte, error) {
	if len(sealed) == 0 {
		return nil, silo.Errorf(silo.EINTERNAL, "a sealed secret of %s is malformed", owner)
	}
	switch sealed[0] {
	case sealV1:
		return s.openV1(sealed, owner)
	case sealV2:
		return s.openV2(sealed, owner)
	}
	return nil, silo.Errorf(silo.EINTERNAL, "a sealed secret of %s has unknown format %d", owner, sealed[0])
}

// openV1 tries every key: the format does not say which sealed it.
func (s *Sealer) openV1(sealed []byte, owner string) ([]byte, error) {
	for _, k := range s.keys() {
		n := k.aead.NonceSize()
		if len(sealed) < 1+n {
			break
		}
		if plain, err := k.aead.Open(nil, sealed[1:1+n], sealed[1+n:], []byte(owner)); err == nil {
			return plain, nil
		}
	}
	return nil, silo.WrapError(errors.New("aead open failed"), silo.EINTERNAL,
		"the secret of %s (sealed in format 1, which names no key) opens with neither SILO_SECRET_KEY (key %s) nor SILO_SECRET_KEY_PREVIOUS (%s)",
		owner, s.KeyID(), s.previousList())
}

func (s *Sealer) openV2(sealed []byte, owner string) ([]byte, error) {
	if len(sealed) < headerV2 {
		return nil, silo.Errorf(silo.EINTERNAL, "a sealed secret of %s is malformed", owner)
	}
	id := sealed[1:headerV2]
	k, ok := s.key(id)
	if !ok {
		return nil, silo.Errorf(silo.EINTERNAL,
			"the secret of %s is sealed under key %x, which this server does not have: SILO_SECRET_KEY is key %s and SILO_SECRET_KEY_PREVIOUS holds %s; add key %x to SILO_SECRET_KEY_PREVIOUS",
			owner, id, s.KeyID(), s.previousList(), id)
	}
	n := k.aead.NonceSize()
	if len(sealed) < headerV2+n {
		return nil, silo.Errorf(silo.EINTERNAL, "a sealed secret of %s is malformed", owner)
	}
	plain, err := k.aead.Open(nil, sealed[headerV2:headerV2+n], sealed[headerV2+n:], additionalData(sealed[:headerV2], owner))
	if err != nil {
		return nil, silo.WrapError(errors.New("aead open failed"), silo.EINTERNAL,
			"the secret of %s does not open with key %x: it was altered, or sealed for another owner", owner, id)
	}
	return plain, nil
}

// IsCurrent reports whether a sealed value is in the current format under
// the current key, so that a reseal would leave it as it is. It does not
// check that the value opens.
func (s *Sealer) IsCurrent(sealed []byte) bool {
	return len(sealed) > headerV2 && sealed[0] == sealV2 && bytes.Equal(sealed[1:headerV2], s.current.id[:])
}

// Reseal returns a value sealed for owner under the current key: sealed
// itself when it already is (moved false), or a new sealing of what it
// opens to. It returns Open's errors.
func (s *Sealer) Reseal(sealed []byte, owner string) (out []byte, moved bool, err error) {
	if s.IsCurrent(sealed) {
		return sealed, false, nil
	}
	plain, err := s.Open(sealed, owner)
	if err != nil {
		return nil, false, err
	}
	return s.Seal(plain, owner), true, nil
}

func (s *Sealer) keys() []sealKey { return append([]sealKey{s.current}, s.previous...) }

func (s *Sealer) key(id []byte) (sealKey, bool) {
	for _, k := range s.keys() {
		if bytes.Equal(k.id[:], id) {
			return k, true
		}
	}
	return sealKey{}, false
}

func (s *Sealer) previousList() string {
	if len(s.previous) == 0 {
		return "no key"
	}
	return strings.Join(s.PreviousKeyIDs(), ", ")
}
