package shardmap_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

func newKey(t *testing.T) []byte {
	t.Helper()
	key := make([]byte, shardmap.SecretKeyLen)
	_, err := rand.Read(key)
	require.NoError(t, err)
	return key
}

func newSealer(t *testing.T, keys ...[]byte) *shardmap.Sealer {
	t.Helper()
	s, err := shardmap.NewSealer(bytes.Join(keys, nil))
	require.NoError(t, err)
	return s
}

func TestSealRoundTrip(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	s := newSealer(t, key)
	for _, tc := range []struct {
		name, plaintext, owner string
	}{
		{"password", "a-tenant-password", "acme"},
		{"dsn", "postgres://silo:s3cret@10.0.0.5:5432/postgres?sslmode=require", "shard/eu-1"},
		{"empty", "", "acme"},
		{"binary", "\x00\xff\x01 and text", "acme"},
		{"long", strings.Repeat("x", 10000), "shard/a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sealed := s.Seal([]byte(tc.plaintext), tc.owner)
			require.EqualValues(t, 2, sealed[0], "version 2")
			require.Equal(t, shardmap.KeyID(key), hex.EncodeToString(sealed[1:1+shardmap.KeyIDLen]), "the header names the key")
			require.True(t, s.IsCurrent(sealed))
			if tc.plaintext != "" {
				require.NotContains(t, string(sealed), tc.plaintext)
			}
			got, err := s.Open(sealed, tc.owner)
			require.NoError(t, err)
			require.Equal(t, tc.plaintext, string(got))
			require.NotEqual(t, sealed, s.Seal([]byte(tc.plaintext), tc.owner), "a fresh nonce each time")
		})
	}
}

// Values that Silo's first sealed format (version 1, no key id) holds in
// catalogs today, made by that version's Sealer.
var (
	v1Key       = mustHex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	v1Sealed    = mustHex("014b82c3d419c7e74bdb449de0646cfbb770ac606c40274b007a921a3ab7a1ae57a861b8ece0960219c4e8f63cb76958f6dac96073f9e0ff")
	v1Plaintext = "a-password-sealed-by-silo-1"
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestOpenFormatV1(t *testing.T) {
	t.Parallel()
	other := newKey(t)
	for _, tc := range []struct {
		name  string
		keys  [][]byte
		owner string
		ok    bool
	}{
		{"its key, current", [][]byte{v1Key}, "acme", true},
		{"its key, previous", [][]byte{other, v1Key}, "acme", true},
		{"another key", [][]byte{other}, "acme", false},
		{"another owner", [][]byte{v1Key}, "globex", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSealer(t, tc.keys...)
			got, err := s.Open(v1Sealed, tc.owner)
			if tc.ok {
				require.NoError(t, err)
				require.Equal(t, v1Plaintext, string(got))
				require.False(t, s.IsCurrent(v1Sealed), "a reseal moves version 1 values")
				return
			}
			requireCode(t, err, silo.EINTERNAL)
			require.Contains(t, err.Error(), "format 1")
			require.NotContains(t, err.Error(), v1Plaintext)
		})
	}
}

// A sealed value that was tampered with, moved to another row or cut short
// does not open, and the error never shows the secret.
func TestHostileSealedValueTampering(t *testing.T) {
	t.Parallel()
	a, b := newKey(t), newKey(t)
	s := newSealer(t, a, b)
	const secret = "postgres://silo:hunter2-hunter2@10.0.0.5/postgres"
	sealed := s.Seal([]byte(secret), "shard/eu-1")
	underB := newSealer(t, b).Seal([]byte(secret), "shard/eu-1")
	edit := func(v []byte, f func([]byte)) []byte {
		v = bytes.Clone(v)
		f(v)
		return v
	}
	for _, tc := range []struct {
		name   string
		sealed []byte
		owner  string
		want   string
	}{
		{"another owner", sealed, "shard/eu-2", "another owner"},
		{"a tenant's row", sealed, "eu-1", "another owner"},
		{"ciphertext bit flipped", edit(sealed, func(v []byte) { v[len(v)-1] ^= 1 }), "shard/eu-1", "altered"},
		{"nonce changed", edit(sealed, func(v []byte) { v[1+shardmap.KeyIDLen] ^= 1 }), "shard/eu-1", "altered"},
		// The header is authenticated: naming another key the Sealer has
		// does not make it try that key on this ciphertext.
		{"key id swapped", edit(underB, func(v []byte) { copy(v[1:], mustHex(shardmap.KeyID(a))) }), "shard/eu-1", "altered"},
		{"downgraded to version 1", edit(sealed, func(v []byte) { v[0] = 1 }), "shard/eu-1", "format 1"},
		{"unknown version", edit(sealed, func(v []byte) { v[0] = 9 }), "shard/eu-1", "unknown format 9"},
		{"truncated header", sealed[:3], "shard/eu-1", "malformed"},
		{"truncated nonce", sealed[:8], "shard/eu-1", "malformed"},
		{"truncated tag", sealed[:len(sealed)-4], "shard/eu-1", "altered"},
		{"empty", nil, "shard/eu-1", "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Open(tc.sealed, tc.owner)
			requireCode(t, err, silo.EINTERNAL)
			require.Nil(t, got)
			require.Contains(t, err.Error(), tc.want)
			require.NotContains(t, err.Error(), "hunter2")
		})
	}
}

// A value sealed under a key the server lacks is refused with the key's id,
// so the operator knows which key to add back, and never with the secret.
func TestHostileOpenUnderUnknownKey(t *testing.T) {
	t.Parallel()
	a, b, c := newKey(t), newKey(t), newKey(t)
	sealed := newSealer(t, a).Seal([]byte("the-secret-password"), "acme")
	_, err := newSealer(t, b, c).Open(sealed, "acme")
	requireCode(t, err, silo.EINTERNAL)
	msg := err.Error()
	require.Contains(t, msg, "acme")
	require.Contains(t, msg, "sealed under key "+shardmap.KeyID(a))
	require.Contains(t, msg, "SILO_SECRET_KEY is key "+shardmap.KeyID(b))
	require.Contains(t, msg, "SILO_SECRET_KEY_PREVIOUS holds "+shardmap.KeyID(c))
	require.NotContains(t, msg, "the-secret-password")
	require.NotContains(t, msg, hex.EncodeToString(a))

	_, err = newSealer(t, b).Open(sealed, "acme")
	require.ErrorContains(t, err, "SILO_SECRET_KEY_PREVIOUS holds no key")
}

// Rotation: seal under A; a server with B current and A previous opens it
// and reseals it under B; then B alone opens it.
func TestKeyRotation(t *testing.T) {
	t.Parallel()
	a, b := newKey(t), newKey(t)
	underA := newSealer(t, a).Seal([]byte("pw"), "acme")

	rotating := newSealer(t, b, a)
	require.Equal(t, shardmap.KeyID(b), rotating.KeyID())
	require.Equal(t, []string{shardmap.KeyID(a)}, rotating.PreviousKeyIDs())
	got, err := rotating.Open(underA, "acme")
	require.NoError(t, err)
	require.Equal(t, "pw", string(got))
	require.False(t, rotating.IsCurrent(underA))

	underB, moved, err := rotating.Reseal(underA, "acme")
	require.NoError(t, err)
	require.True(t, moved)
	require.True(t, rotating.IsCurrent(underB))
	again, moved, err := rotating.Reseal(underB, "acme")
	require.NoError(t, err)
	require.False(t, moved, "a current value stays as it is")
	require.Equal(t, underB, again)

	got, err = newSealer(t, b).Open(underB, "acme")
	require.NoError(t, err)
	require.Equal(t, "pw", string(got))
	_, err = newSealer(t, b).Open(underA, "acme")
	requireCode(t, err, silo.EINTERNAL)

	// A value under an unknown key does not reseal.
	_, _, err = newSealer(t, b).Reseal(underA, "acme")
	require.ErrorContains(t, err, shardmap.KeyID(a))

	// Version 1 values move too.
	moved1, moved, err := newSealer(t, b, v1Key).Reseal(v1Sealed, "acme")
	require.NoError(t, err)
	require.True(t, moved)
	got, err = newSealer(t, b).Open(moved1, "acme")
	require.NoError(t, err)
	require.Equal(t, v1Plaintext, string(got))
}

func TestParseKeyRing(t *testing.T) {
	t.Parallel()
	a, b := strings.Repeat("ab", 32), strings.Repeat("cd", 32)
	for _, tc := range []struct {
		name     string
		current  string
		previous []string
		keys     int
		err      string
	}{
		{"current only", a, nil, 1, ""},
		{"with a previous key", a, []string{b}, 2, ""},
		{"previous same as current", a, []string{a, b}, 2, ""},
		{"previous twice", a, []string{b, " " + b + " "}, 2, ""},
		{"blank previous", a, []string{""}, 1, ""},
		{"bad current", "abc", nil, 0, "must be 64 hex characters"},
		{"bad previous", a, []string{b, "not-a-key-0123"}, 0, "previous key 2 of 2: the secret key must be 64 hex characters"},
		{"short previous", a, []string{"abcd"}, 0, "previous key 1 of 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ring, err := shardmap.ParseKeyRing(tc.current, tc.previous)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				require.NotContains(t, err.Error(), "not-a-key", "errors name keys by position")
				return
			}
			require.NoError(t, err)
			require.Len(t, ring, tc.keys*shardmap.SecretKeyLen)
			s, err := shardmap.NewSealer(ring)
			require.NoError(t, err)
			require.Equal(t, shardmap.KeyID(mustHex(tc.current)), s.KeyID())
			require.Len(t, s.PreviousKeyIDs(), tc.keys-1)
		})
	}
}

func TestNewSealerBadRing(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	for _, tc := range []struct {
		name string
		ring []byte
		err  string
	}{
		{"empty", nil, "want 32"},
		{"short", key[:31], "want 32"},
		{"ragged", append(bytes.Clone(key), 1), "want 32"},
		{"one key twice", append(bytes.Clone(key), key...), "same id " + shardmap.KeyID(key)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := shardmap.NewSealer(tc.ring)
			require.ErrorContains(t, err, tc.err)
		})
	}
}

func TestKeyIDIsSHA256Prefix(t *testing.T) {
	t.Parallel()
	// echo -n 0001…1f | xxd -r -p | sha256sum | cut -c1-8
	require.Equal(t, "630dcd29", shardmap.KeyID(v1Key))
}
