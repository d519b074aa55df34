package proxy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
)

// wire is a client of the endpoint that writes the protocol by hand, to
// send what no driver would.
type wire struct {
	t  *testing.T
	nc net.Conn
	fe *pgproto3.Frontend
}

// wire dials the endpoint. Every read and write is bounded.
func (b *bundle) wire(t *testing.T) *wire {
	t.Helper()
	nc, err := net.DialTimeout("tcp", b.addr, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	require.NoError(t, nc.SetDeadline(time.Now().Add(20*time.Second)))
	return &wire{t: t, nc: nc, fe: pgproto3.NewFrontend(nc, nc)}
}

// write sends raw bytes.
func (w *wire) write(b []byte) {
	w.t.Helper()
	_, err := w.nc.Write(b)
	require.NoError(w.t, err)
}

// send sends messages in one write.
func (w *wire) send(msgs ...pgproto3.FrontendMessage) {
	w.t.Helper()
	w.write(encode(w.t, msgs...))
}

func encode(t *testing.T, msgs ...pgproto3.FrontendMessage) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		b, err = m.Encode(b)
		require.NoError(t, err)
	}
	return b
}

// startupPacket encodes a startup packet: a protocol version or request
// code, then name-value pairs.
func startupPacket(code uint32, kv ...string) []byte {
	body := binary.BigEndian.AppendUint32(nil, code)
	for _, s := range kv {
		body = append(append(body, s...), 0)
	}
	if code>>16 == 3 {
		body = append(body, 0)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
}

const protocol30 = 3 << 16

func (w *wire) receive() pgproto3.BackendMessage {
	w.t.Helper()
	msg, err := w.fe.Receive()
	require.NoError(w.t, err)
	return msg
}

// fatal reads up to an error, which must be FATAL, and the end of the
// connection after it; it returns the error's SQLSTATE.
func (w *wire) fatal() string {
	w.t.Helper()
	for {
		msg, err := w.fe.Receive()
		require.NoError(w.t, err, "expected an ErrorResponse")
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			require.Equal(w.t, "FATAL", e.Severity, "%s: %s", e.Code, e.Message)
			w.requireClosed()
			return e.Code
		}
		_, isReady := msg.(*pgproto3.ReadyForQuery)
		require.False(w.t, isReady, "expected an ErrorResponse, got ReadyForQuery")
	}
}

// requireClosed reads until the endpoint closes the connection: nothing
// more may come.
func (w *wire) requireClosed() {
	w.t.Helper()
	require.NoError(w.t, w.nc.SetReadDeadline(time.Now().Add(10*time.Second)))
	rest, err := io.ReadAll(w.nc)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		w.t.Fatal("the endpoint did not close the connection")
	}
	require.Empty(w.t, rest, "after the FATAL error")
}

// scramClient is the client's side of SCRAM-SHA-256, as libpq does it.
type scramClient struct {
	password, cnonce string
	clientFirstBare  string
	serverFirst      string
	nonce            string
	salt             []byte
	iters            int
}

func newScram(password string) *scramClient {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	s := &scramClient{password: password, cnonce: base64.StdEncoding.EncodeToString(b)}
	s.clientFirstBare = "n=,r=" + s.cnonce
	return s
}

func (s *scramClient) clientFirst() []byte { return []byte("n,," + s.clientFirstBare) }

// readServerFirst parses the server-first-message.
func (s *scramClient) readServerFirst(t *testing.T, data []byte) {
	t.Helper()
	s.serverFirst = string(data)
	for _, a := range strings.Split(s.serverFirst, ",") {
		switch {
		case strings.HasPrefix(a, "r="):
			s.nonce = a[2:]
		case strings.HasPrefix(a, "s="):
			var err error
			s.salt, err = base64.StdEncoding.DecodeString(a[2:])
			require.NoError(t, err)
		case strings.HasPrefix(a, "i="):
			var err error
			s.iters, err = strconv.Atoi(a[2:])
			require.NoError(t, err)
		}
	}
	require.True(t, strings.HasPrefix(s.nonce, s.cnonce), "the server's nonce extends the client's")
}

// clientFinal is the client-final-message for nonce (normally the server's).
func (s *scramClient) clientFinal(nonce string) []byte {
	without := "c=biws,r=" + nonce
	salted, _ := pbkdf2.Key(sha256.New, s.password, s.salt, s.iters, 32)
	clientKey := hmacSHA256(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	sig := hmacSHA256(stored[:], s.clientFirstBare+","+s.serverFirst+","+without)
	for i := range clientKey {
		clientKey[i] ^= sig[i]
	}
	return []byte(without + ",p=" + base64.StdEncoding.EncodeToString(clientKey))
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// beginSASL sends a startup packet for user and reads the offer of SCRAM.
func (w *wire) beginSASL(user string) {
	w.t.Helper()
	w.write(startupPacket(protocol30, "user", user, "database", user))
	sasl, ok := w.receive().(*pgproto3.AuthenticationSASL)
	require.True(w.t, ok)
	require.Equal(w.t, []string{"SCRAM-SHA-256"}, sasl.AuthMechanisms)
}

// serverFirst sends the client-first-message and reads the server's.
func (w *wire) serverFirst(s *scramClient) {
	w.t.Helper()
	w.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: s.clientFirst()})
	cont, ok := w.receive().(*pgproto3.AuthenticationSASLContinue)
	require.True(w.t, ok)
	s.readServerFirst(w.t, cont.Data)
}

// login logs in as user with password, and reads up to ReadyForQuery.
func (w *wire) login(user, password string) {
	w.t.Helper()
	w.beginSASL(user)
	s := newScram(password)
	w.serverFirst(s)
	w.send(&pgproto3.SASLResponse{Data: s.clientFinal(s.nonce)})
	for {
		switch m := w.receive().(type) {
		case *pgproto3.ErrorResponse:
			w.t.Fatalf("login: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return
		}
	}
}

// query runs one simple query and returns the error's SQLSTATE, if any.
func (w *wire) query(sql string) string {
	w.t.Helper()
	w.send(&pgproto3.Query{String: sql})
	code := ""
	for {
		switch m := w.receive().(type) {
		case *pgproto3.ErrorResponse:
			code = m.Code
		case *pgproto3.ReadyForQuery:
			return code
		}
	}
}

// value runs a query of one row and one column, and returns its value.
func (w *wire) value(sql string) string {
	w.t.Helper()
	w.send(&pgproto3.Query{String: sql})
	var v string
	for {
		switch m := w.receive().(type) {
		case *pgproto3.DataRow:
			v = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			w.t.Fatalf("%s: %s %s", sql, m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return v
		}
	}
}

// selfSigned returns a TLS configuration with a certificate of its own.
func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// sentinel creates, in the tenant's database, a table with one row that
// the attacks try to add to: afterwards, sentinelOK checks that nothing
// changed and that the endpoint still serves the tenant.
func (b *bundle) sentinel(t *testing.T, id, token string) {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer conn.Close(b.ctx)
	_, err = conn.Exec(b.ctx, "CREATE TABLE sentinel (a int); INSERT INTO sentinel VALUES (1)")
	require.NoError(t, err)
}

// injected is what the attacks try to run.
const injected = "INSERT INTO sentinel VALUES (2)"

func (b *bundle) sentinelOK(t *testing.T, id, token string) {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.dsn(id, token, id))
	require.NoError(t, err, "the endpoint still serves its clients")
	defer conn.Close(b.ctx)
	var rows string
	require.NoError(t, conn.QueryRow(b.ctx, "SELECT string_agg(a::text, ',') FROM sentinel").Scan(&rows))
	require.Equal(t, "1", rows, "the tenant's database is as it was")
}
