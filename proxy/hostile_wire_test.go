package proxy_test

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/proxy"
)

// What a client that does not follow the protocol gets: the SQLSTATE
// PostgreSQL would answer, the end of its connection, nothing run in the
// tenant's database, and an endpoint that goes on serving the others.
// Each kind of bad input is a subtest; they share one endpoint, and run
// one after the other.
func TestHostileWire(t *testing.T) {
	t.Parallel()
	b := setup(t, options{proxy: proxy.Config{
		TLS: selfSigned(t), AuthTimeout: 3 * time.Second,
		MaxMessageBytes: 64 << 10, MaxBatchBytes: 256 << 10,
	}})
	id, token := b.tenant(t, "wire", "")
	b.sentinel(t, id, token)
	// A plaintext startup that would run injected if it were let in.
	startup := startupPacket(protocol30, "user", id, "database", id)
	query := encode(t, &pgproto3.Query{String: injected})

	for _, tt := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"garbage instead of a startup packet", func(t *testing.T) {
			w := b.wire(t)
			w.write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			require.Equal(t, "08P01", w.fatal())
			// A length that fits, and a version that is no version.
			w = b.wire(t)
			w.write([]byte{0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef})
			require.Equal(t, "0A000", w.fatal())
		}},
		{"a startup packet over 10,000 bytes", func(t *testing.T) {
			w := b.wire(t)
			// The length alone: the endpoint answers before the body.
			w.write(binary.BigEndian.AppendUint32(nil, 10001))
			require.Equal(t, "08P01", w.fatal())
			w = b.wire(t)
			w.write(binary.BigEndian.AppendUint32(nil, 0x7fffffff))
			require.Equal(t, "08P01", w.fatal())
			w = b.wire(t)
			w.write([]byte{0, 0, 0, 3})
			require.Equal(t, "08P01", w.fatal())
		}},
		{"protocol 2.0 and 4.0", func(t *testing.T) {
			for _, v := range []uint32{2 << 16, 4 << 16, 1 << 16, 0xffff << 16} {
				w := b.wire(t)
				w.write(startupPacket(v, "user", id, "database", id))
				require.Equal(t, "0A000", w.fatal(), "%x", v)
			}
		}},
		{"protocol 3.2 is negotiated down to 3.0", func(t *testing.T) {
			w := b.wire(t)
			w.write(startupPacket(3<<16|2, "user", id, "database", id, "_pq_.unknown_option", "on"))
			npv, ok := w.receive().(*pgproto3.NegotiateProtocolVersion)
			require.True(t, ok)
			require.EqualValues(t, 0, npv.NewestMinorProtocol)
			require.Equal(t, []string{"_pq_.unknown_option"}, npv.UnrecognizedOptions)
			_, ok = w.receive().(*pgproto3.AuthenticationSASL)
			require.True(t, ok)
			// pgx offers no 3.2; libpq 18 does: the full login works.
			w = b.wire(t)
			s := newScram(token)
			w.write(startupPacket(3<<16|2, "user", id, "database", id))
			_, ok = w.receive().(*pgproto3.NegotiateProtocolVersion)
			require.True(t, ok)
			_, ok = w.receive().(*pgproto3.AuthenticationSASL)
			require.True(t, ok)
			w.serverFirst(s)
			w.send(&pgproto3.SASLResponse{Data: s.clientFinal(s.nonce)})
			for {
				if _, ok := w.receive().(*pgproto3.ReadyForQuery); ok {
					break
				}
			}
			require.Equal(t, "", w.query("SELECT 1"))
		}},
		{"GSSENCRequest declined, then a startup", func(t *testing.T) {
			w := b.wire(t)
			w.write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30})
			var one [1]byte
			_, err := io.ReadFull(w.nc, one[:])
			require.NoError(t, err)
			require.Equal(t, byte('N'), one[0])
			w.login(id, token)
			require.Equal(t, "", w.query("SELECT 1"))
			// Twice is a violation.
			w = b.wire(t)
			w.write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30, 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30})
			_, err = io.ReadFull(w.nc, one[:])
			require.NoError(t, err)
			require.Equal(t, "08P01", w.fatal())
		}},
		{"bytes stuffed after SSLRequest are not read as plaintext", func(t *testing.T) {
			// CVE-2021-23214: a man in the middle appends a plaintext
			// startup and query to the client's SSLRequest.
			w := b.wire(t)
			w.write(append(append([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}, startup...), query...))
			rest, _ := io.ReadAll(w.nc)
			require.NotEmpty(t, rest)
			require.Equal(t, byte('S'), rest[0])
			// What follows is a TLS alert (record type 21), if anything:
			// never an authentication request ('R').
			if len(rest) > 1 {
				require.Equal(t, byte(21), rest[1], "%q", rest)
			}
			// The handshake itself works.
			w = b.wire(t)
			w.write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
			var one [1]byte
			_, err := io.ReadFull(w.nc, one[:])
			require.NoError(t, err)
			require.Equal(t, byte('S'), one[0])
			tc := tls.Client(w.nc, &tls.Config{InsecureSkipVerify: true})
			require.NoError(t, tc.Handshake())
			w.nc, w.fe = tc, pgproto3.NewFrontend(tc, tc)
			w.login(id, token)
			require.Equal(t, "", w.query("SELECT 1"))
		}},
		{"a message over the size cap", func(t *testing.T) {
			w := b.wire(t)
			w.login(id, token)
			// Its header alone: the endpoint refuses it before its body.
			w.write([]byte{'Q', 0, 1, 0, 5})
			require.Equal(t, "54000", w.fatal())
			// Before authentication too.
			w = b.wire(t)
			w.beginSASL(id)
			w.write([]byte{'p', 0x7f, 0xff, 0xff, 0xff})
			require.Equal(t, "54000", w.fatal())
		}},
		{"an unknown message type", func(t *testing.T) {
			w := b.wire(t)
			w.login(id, token)
			w.write([]byte{'z', 0, 0, 0, 4})
			require.Equal(t, "08P01", w.fatal())
			// A backend's message sent by a client.
			w = b.wire(t)
			w.login(id, token)
			w.write([]byte{'Z', 0, 0, 0, 5, 'I'})
			require.Equal(t, "08P01", w.fatal())
		}},
		{"a message length under 4", func(t *testing.T) {
			for _, n := range []byte{0, 3} {
				w := b.wire(t)
				w.login(id, token)
				w.write([]byte{'Q', 0, 0, 0, n})
				require.Equal(t, "08P01", w.fatal())
			}
			w := b.wire(t)
			w.login(id, token)
			w.write([]byte{'Q', 0xff, 0xff, 0xff, 0xff})
			require.Equal(t, "08P01", w.fatal())
		}},
		{"messages before authentication ends", func(t *testing.T) {
			// With the startup packet, before any answer.
			w := b.wire(t)
			w.write(append(append([]byte(nil), startup...), query...))
			_, ok := w.receive().(*pgproto3.AuthenticationSASL)
			require.True(t, ok)
			require.Equal(t, "08P01", w.fatal())
			// In place of the client-final-message.
			w = b.wire(t)
			w.beginSASL(id)
			w.serverFirst(newScram(token))
			w.write(query)
			require.Equal(t, "08P01", w.fatal())
			// A Sync, a Terminate-less EOF.
			w = b.wire(t)
			w.beginSASL(id)
			w.send(&pgproto3.Sync{})
			require.Equal(t, "08P01", w.fatal())
		}},
		{"SASL: a wrong mechanism", func(t *testing.T) {
			for _, mech := range []string{"SCRAM-SHA-256-PLUS", "PLAIN", ""} {
				w := b.wire(t)
				w.beginSASL(id)
				w.send(&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: newScram(token).clientFirst()})
				require.Equal(t, "08P01", w.fatal(), mech)
			}
		}},
		{"SASL: a malformed client-first-message", func(t *testing.T) {
			for _, first := range []string{"", "garbage", "n,,", "n,,r=abc", "n,a=postgres,n=,r=abc", "n,,n=,r=a\x01b",
				"n,,n=,r=abc,m=ext", "n,,n=,r=" + strings.Repeat("\xff", 30000)} {
				w := b.wire(t)
				w.beginSASL(id)
				w.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(first)})
				require.Equal(t, "08P01", w.fatal(), "%q", first)
			}
		}},
		{"SASL: channel binding asked for", func(t *testing.T) {
			w := b.wire(t)
			w.beginSASL(id)
			w.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("p=tls-server-end-point,,n=,r=abc")})
			require.Equal(t, "08P01", w.fatal())
		}},
		{"SASL: a wrong nonce", func(t *testing.T) {
			w := b.wire(t)
			w.beginSASL(id)
			s := newScram(token)
			w.serverFirst(s)
			// The client's own nonce, without the server's part: a proof
			// computed for it is still refused.
			w.send(&pgproto3.SASLResponse{Data: s.clientFinal(s.cnonce)})
			require.Equal(t, "08P01", w.fatal())
		}},
		{"SASL: a replayed proof", func(t *testing.T) {
			w := b.wire(t)
			w.beginSASL(id)
			s := newScram(token)
			w.serverFirst(s)
			final := s.clientFinal(s.nonce)
			w.send(&pgproto3.SASLResponse{Data: final})
			_, ok := w.receive().(*pgproto3.AuthenticationSASLFinal)
			require.True(t, ok, "the recorded exchange succeeded")
			// The eavesdropper replays it: same client nonce, same final
			// message. The server's nonce is new, so the nonce differs...
			w = b.wire(t)
			w.beginSASL(id)
			replay := &scramClient{password: "unknown to the eavesdropper", cnonce: s.cnonce, clientFirstBare: s.clientFirstBare}
			w.serverFirst(replay)
			require.NotEqual(t, s.nonce, replay.nonce, "a fresh server nonce")
			w.send(&pgproto3.SASLResponse{Data: final})
			require.Equal(t, "08P01", w.fatal())
			// ...and with the new nonce put in, the proof no longer fits.
			w = b.wire(t)
			w.beginSASL(id)
			w.serverFirst(replay)
			forged := bytes.Replace(final, []byte("r="+s.nonce), []byte("r="+replay.nonce), 1)
			w.send(&pgproto3.SASLResponse{Data: forged})
			require.Equal(t, "28P01", w.fatal())
		}},
		{"a client that never finishes authenticating", func(t *testing.T) {
			// The three at once, each read until the endpoint hangs up.
			start := time.Now()
			stages := []string{"nothing", "startup", "client-first"}
			took := make(chan time.Duration, len(stages))
			for _, stage := range stages {
				w := b.wire(t)
				switch stage {
				case "startup":
					w.beginSASL(id)
				case "client-first":
					w.beginSASL(id)
					w.serverFirst(newScram(token))
				}
				go func() {
					_, _ = io.ReadAll(w.nc)
					took <- time.Since(start)
				}()
			}
			for range stages {
				d := <-took
				require.Greater(t, d, 2*time.Second)
				require.Less(t, d, 8*time.Second, "cut off after AuthTimeout")
			}
		}},
		{"a pipeline without Sync over MaxBatchBytes", func(t *testing.T) {
			w := b.wire(t)
			w.login(id, token)
			// 26 messages of 10 KiB, the last over 256 KiB; each would add
			// a row.
			var pipe []byte
			for range 26 {
				pipe = append(pipe, encode(t,
					&pgproto3.Parse{Query: injected + " /* " + strings.Repeat("x", 10<<10-64) + " */"})...)
			}
			w.write(pipe)
			require.Equal(t, "54000", w.fatal())
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.run(t)
			b.sentinelOK(t, id, token)
		})
	}
}

// More clients than MaxClients are refused with 53300, connections that
// have not logged in yet counted; the others go on, and once one leaves, a
// new one gets in.
func TestHostileTooManyClients(t *testing.T) {
	t.Parallel()
	b := setup(t, options{proxy: proxy.Config{MaxClients: 2}})
	id, token := b.tenant(t, "full", "")
	var conns []*pgx.Conn
	for range 2 {
		conn, err := pgx.Connect(b.ctx, b.dsn(id, token, id))
		require.NoError(t, err)
		defer conn.Close(b.ctx)
		conns = append(conns, conn)
	}
	for range 3 {
		w := b.wire(t)
		w.write(startupPacket(protocol30, "user", id, "database", id))
		require.Equal(t, "53300", w.fatal())
	}
	_, err := pgx.Connect(b.ctx, b.dsn(id, token, id))
	require.Equal(t, "53300", pgCode(err), "%v", err)
	var n int
	require.NoError(t, conns[0].QueryRow(b.ctx, "SELECT 1").Scan(&n))
	// A connection that has sent nothing yet takes the place of one that
	// leaves.
	require.NoError(t, conns[1].Close(b.ctx))
	var idle *wire
	require.Eventually(t, func() bool {
		if idle != nil {
			idle.nc.Close()
		}
		idle = b.wire(t)
		time.Sleep(100 * time.Millisecond) // for the endpoint to count it
		_, err := pgx.Connect(b.ctx, b.dsn(id, token, id))
		return pgCode(err) == "53300"
	}, 10*time.Second, 10*time.Millisecond)
	idle.nc.Close()
	require.Eventually(t, func() bool {
		conn, err := pgx.Connect(b.ctx, b.dsn(id, token, id))
		if err != nil {
			return false
		}
		defer conn.Close(b.ctx)
		return conn.QueryRow(b.ctx, "SELECT 1").Scan(&n) == nil
	}, 10*time.Second, 50*time.Millisecond)
}
