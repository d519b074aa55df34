package proxy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

const scramMechanism = "SCRAM-SHA-256"

// authenticate runs a SCRAM-SHA-256 exchange (RFC 5802, RFC 7677) with the
// client and returns the id of the key it proved it holds. The password is
// never sent, so no TLS is needed for it, and none is ever asked for in
// the clear. A tenant with no login (unknown, deleted, purged, or without a
// key that has a verifier) gets the same exchange, with a salt derived
// from its id, and the same failure as a wrong key.
func (c *clientConn) authenticate(user string, login *shardmap.TenantLogin) (string, error) {
	var verifiers []shardmap.KeyVerifier
	salt := c.srv.mockSalt(user)
	if login != nil && login.Salt != nil && login.State != silo.TenantDeleted && login.State != silo.TenantPurged {
		verifiers, salt = login.Verifiers, login.Salt
	}
	if err := c.send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}}); err != nil {
		return "", err
	}
	if err := c.be.SetAuthType(pgproto3.AuthTypeSASL); err != nil {
		return "", err
	}
	msg, err := c.be.Receive()
	if err != nil {
		return "", protocolError(err)
	}
	first, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok {
		return "", fatalf(codeProtocolViolation, "expected SASL response, got message type %T", msg)
	}
	if first.AuthMechanism != scramMechanism {
		return "", fatalf(codeProtocolViolation, "client selected an invalid SASL authentication mechanism")
	}
	gs2, bare, cnonce, err := parseClientFirst(string(first.Data))
	if err != nil {
		return "", err
	}
	snonce := make([]byte, 18)
	_, _ = rand.Read(snonce)
	nonce := cnonce + base64.StdEncoding.EncodeToString(snonce)
	serverFirst := "r=" + nonce + ",s=" + base64.StdEncoding.EncodeToString(salt) + ",i=" + strconv.Itoa(shardmap.ScramIterations)
	if err := c.send(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}); err != nil {
		return "", err
	}
	if err := c.be.SetAuthType(pgproto3.AuthTypeSASLContinue); err != nil {
		return "", err
	}
	msg, err = c.be.Receive()
	if err != nil {
		return "", protocolError(err)
	}
	final, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return "", fatalf(codeProtocolViolation, "expected SASL response, got message type %T", msg)
	}
	withoutProof, proof, err := parseClientFinal(string(final.Data), gs2, nonce)
	if err != nil {
		return "", err
	}
	authMessage := bare + "," + serverFirst + "," + withoutProof
	for _, v := range verifiers {
		if !proofMatches(v.StoredKey, authMessage, proof) {
			continue
		}
		sig := hmacSum(v.ServerKey, authMessage)
		if err := c.send(&pgproto3.AuthenticationSASLFinal{Data: []byte("v=" + base64.StdEncoding.EncodeToString(sig))}); err != nil {
			return "", err
		}
		return v.KeyID, nil
	}
	return "", authFailed(user)
}

// proofMatches checks a client proof: ClientKey = proof XOR
// HMAC(StoredKey, AuthMessage), and H(ClientKey) must be StoredKey.
func proofMatches(storedKey []byte, authMessage string, proof []byte) bool {
	sig := hmacSum(storedKey, authMessage)
	if len(proof) != len(sig) {
		return false
	}
	clientKey := make([]byte, len(sig))
	for i := range sig {
		clientKey[i] = proof[i] ^ sig[i]
	}
	sum := sha256.Sum256(clientKey)
	return subtle.ConstantTimeCompare(sum[:], storedKey) == 1
}

func hmacSum(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// parseClientFirst parses a client-first-message: its GS2 header (no
// channel binding: this server offers no SCRAM-SHA-256-PLUS), its bare
// part and the client's nonce.
func parseClientFirst(s string) (gs2, bare, nonce string, err error) {
	bad := fatalf(codeProtocolViolation, "malformed SCRAM message")
	var rest string
	switch {
	case strings.HasPrefix(s, "n,"), strings.HasPrefix(s, "y,"):
		rest = s[2:]
	case strings.HasPrefix(s, "p="):
		return "", "", "", fatalf(codeProtocolViolation, "channel binding was not offered: SCRAM-SHA-256 only")
	default:
		return "", "", "", bad
	}
	// An authorization identity (a=) is not supported, as in PostgreSQL.
	authzid, bare, ok := strings.Cut(rest, ",")
	if !ok || authzid != "" {
		return "", "", "", bad
	}
	gs2 = s[:len(s)-len(bare)]
	attrs := strings.Split(bare, ",")
	if len(attrs) < 2 || !strings.HasPrefix(attrs[0], "n=") || !strings.HasPrefix(attrs[1], "r=") {
		return "", "", "", bad
	}
	nonce = attrs[1][2:]
	if nonce == "" || strings.ContainsFunc(nonce, func(r rune) bool { return r < 0x21 || r > 0x7e || r == ',' }) {
		return "", "", "", bad
	}
	for _, a := range attrs[2:] {
		if strings.HasPrefix(a, "m=") {
			return "", "", "", fatalf(codeProtocolViolation, "SCRAM extensions are not supported")
		}
	}
	return gs2, bare, nonce, nil
}

// parseClientFinal parses a client-final-message: its channel binding must
// repeat the GS2 header, its nonce must be the exchange's. It returns the
// message without its proof, and the proof.
func parseClientFinal(s, gs2, nonce string) (string, []byte, error) {
	bad := fatalf(codeProtocolViolation, "malformed SCRAM message")
	i := strings.LastIndex(s, ",p=")
	if i < 0 {
		return "", nil, bad
	}
	without, proofB64 := s[:i], s[i+3:]
	attrs := strings.Split(without, ",")
	if len(attrs) < 2 || attrs[0] != "c="+base64.StdEncoding.EncodeToString([]byte(gs2)) {
		return "", nil, fatalf(codeProtocolViolation, "SCRAM channel binding check failed")
	}
	if attrs[1] != "r="+nonce {
		return "", nil, fatalf(codeProtocolViolation, "SCRAM nonce mismatch")
	}
	proof, err := base64.StdEncoding.DecodeString(proofB64)
	if err != nil || len(proof) != sha256.Size {
		return "", nil, bad
	}
	return without, proof, nil
}

// protocolError is what a client is told when its messages do not parse.
func protocolError(err error) error {
	if _, ok := errors.AsType[*pgproto3.ExceededMaxBodyLenErr](err); ok {
		return fatalf(codeProgramLimit, "message too large")
	}
	if se, ok := errors.AsType[*sqlError](err); ok {
		return se
	}
	if isEOF(err) {
		return err
	}
	return fatalf(codeProtocolViolation, "invalid message: %v", err)
}
