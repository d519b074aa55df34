package shardmap

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The verifier follows RFC 5802 as PostgreSQL stores it; logging in with
// the password (TestCreateAndIsolation) proves PostgreSQL agrees, and this
// checks the parts.
func TestScramVerifier(t *testing.T) {
	t.Parallel()
	v, err := ScramVerifier("pencil")
	require.NoError(t, err)
	head, keys, ok := strings.Cut(v, "$")
	require.True(t, ok)
	require.Equal(t, "SCRAM-SHA-256", head)
	iterSalt, storedServer, ok := strings.Cut(keys, "$")
	require.True(t, ok)
	iter, saltB64, _ := strings.Cut(iterSalt, ":")
	n, err := strconv.Atoi(iter)
	require.NoError(t, err)
	salt, err := base64.StdEncoding.DecodeString(saltB64)
	require.NoError(t, err)
	stored, server, _ := strings.Cut(storedServer, ":")
	salted, err := pbkdf2.Key(sha256.New, "pencil", salt, n, 32)
	require.NoError(t, err)
	mac := hmac.New(sha256.New, salted)
	mac.Write([]byte("Server Key"))
	require.Equal(t, base64.StdEncoding.EncodeToString(mac.Sum(nil)), server)
	require.NotEmpty(t, stored)

	w, err := ScramVerifier("pencil")
	require.NoError(t, err)
	require.NotEqual(t, v, w, "a fresh salt each time")
}

func BenchmarkScramVerifier(b *testing.B) {
	for b.Loop() {
		if _, err := ScramVerifier("a-password-of-fifty-two-characters-more-or-less-xx"); err != nil {
			b.Fatal(err)
		}
	}
}
