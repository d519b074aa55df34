package proxy

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
)

// The fuzz targets' seeds run with every `go test`; `go test -fuzz=Name`
// explores from them. What they find goes to testdata/fuzz/Name, and runs
// from there as a seed too.

// startupBody encodes a startup packet's body (after its length).
func startupBody(code uint32, kv ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, code)
	for _, s := range kv {
		b = append(b, s...)
		b = append(b, 0)
	}
	if code>>16 == 3 {
		b = append(b, 0)
	}
	return b
}

func FuzzParseStartup(f *testing.F) {
	f.Add(startupBody(pgproto3.ProtocolVersion30, "user", "acme", "database", "acme", "options", `-c search_path=a\ b`))
	f.Add(startupBody(pgproto3.ProtocolVersion30, "user", "acme", "client_encoding", "UTF8", "application_name", "psql"))
	f.Add(startupBody(3<<16|2, "user", "acme", "_pq_.protocol_managed_params", "x"))
	f.Add(startupBody(2 << 16))
	f.Add(startupBody(codeSSLRequest))
	f.Add(startupBody(codeGSSENCRequest))
	f.Add(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(startupBody(codeCancelRequest), 1234), 0xdeadbeef))
	f.Add([]byte{0, 3, 0, 0, 'u', 's', 'e', 'r', 0})
	f.Fuzz(func(t *testing.T, buf []byte) {
		p, err := parseStartup(buf)
		if err != nil {
			se, ok := errors.AsType[*sqlError](err)
			require.True(t, ok, "%T %v", err, err)
			require.Contains(t, []string{codeProtocolViolation, codeFeatureNotSupported}, se.code)
			require.True(t, se.fatal)
			return
		}
		switch p.code {
		case codeSSLRequest, codeGSSENCRequest:
			require.Len(t, buf, 4)
		case codeCancelRequest:
			require.Equal(t, len(buf)-8, len(p.secret))
		default:
			require.EqualValues(t, 3, p.code>>16)
			// What was parsed is what the packet says: encoded again, in
			// its own order, it is the packet.
			n := 4
			for name, value := range p.params {
				require.NotEmpty(t, name)
				require.NotContains(t, name, "\x00")
				require.NotContains(t, value, "\x00")
				n += len(name) + len(value) + 2
			}
			require.LessOrEqual(t, n+1, len(buf)) // names given twice count once
		}
	})
}

// quoteOption escapes an argument of the options parameter.
func quoteOption(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func FuzzParseOptions(f *testing.F) {
	for _, s := range []string{
		`-c search_path=a\ b -c statement_timeout=5s`,
		`-csilo.pool_mode=session`,
		`--work-mem=64MB`,
		`-c geqo=off --DateStyle=ISO,\ DMY`,
		`-c`, `-x`, `-c =1`, `\`, `-c a=\`, "\t-c\ta=b\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, err := parseOptions(s)
		if err != nil {
			se, ok := errors.AsType[*sqlError](err)
			require.True(t, ok, "%T %v", err, err)
			require.Contains(t, []string{codeProtocolViolation, codeSyntaxError}, se.code)
			return
		}
		var again []string
		for name, value := range out {
			require.NotEmpty(t, name)
			require.NotContains(t, name, "-")
			require.NotContains(t, name, "=")
			again = append(again, "-c", quoteOption(name+"="+value))
		}
		// Quoted back, the parameters parse to themselves.
		back, err := parseOptions(strings.Join(again, " "))
		require.NoError(t, err)
		require.Equal(t, out, back)
	})
}

func FuzzParseClientFirst(f *testing.F) {
	f.Add("n,,n=,r=rOprNGfwEbeRWgbNEkqO")
	f.Add("y,,n=acme,r=abc")
	f.Add("p=tls-server-end-point,,n=,r=abc")
	f.Add("n,a=admin,n=,r=abc")
	f.Add("n,,n=,r=abc,m=ext")
	f.Add("n,,n=,r=")
	f.Fuzz(func(t *testing.T, s string) {
		gs2, bare, nonce, err := parseClientFirst(s)
		if err != nil {
			require.Equal(t, codeProtocolViolation, err.(*sqlError).code)
			return
		}
		require.Equal(t, s, gs2+bare)
		require.True(t, gs2 == "n,," || gs2 == "y,,", gs2)
		require.True(t, strings.HasPrefix(bare, "n="))
		require.NotEmpty(t, nonce)
		require.NotContains(t, nonce, ",")
		for _, r := range nonce {
			require.True(t, r >= 0x21 && r <= 0x7e)
		}
	})
}

func FuzzParseClientFinal(f *testing.F) {
	proof := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	cbind := "c=" + base64.StdEncoding.EncodeToString([]byte("n,,"))
	f.Add(cbind+",r=abcdef,p="+proof, "n,,", "abcdef")
	f.Add(cbind+",r=abcdef,x=1,p="+proof, "n,,", "abcdef")
	f.Add(cbind+",r=other,p="+proof, "n,,", "abcdef")
	f.Add("c=eSws,r=abcdef,p="+proof, "y,,", "abcdef")
	f.Add(cbind+",r=abcdef,p=AAAA", "n,,", "abcdef")
	f.Add(",p=", "", "")
	f.Fuzz(func(t *testing.T, s, gs2, nonce string) {
		without, proof, err := parseClientFinal(s, gs2, nonce)
		if err != nil {
			require.Equal(t, codeProtocolViolation, err.(*sqlError).code)
			return
		}
		// (Go's decoder takes base64 that is not canonical: no matter.)
		require.True(t, strings.HasPrefix(s, without+",p="))
		require.Len(t, proof, 32)
		require.True(t, strings.HasPrefix(without, "c="+base64.StdEncoding.EncodeToString([]byte(gs2))+",r="+nonce))
	})
}

// upperASCII upper-cases ASCII letters only, as SQL keywords ignore case.
func upperASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 32
		}
	}
	return string(b)
}

func FuzzSQLEffects(f *testing.F) {
	for _, s := range []string{
		"SET search_path = x", "  reset ALL", "/* c /* nested */ */ set x=1", "-- c\nSET x = 1",
		"SELECT set_config('a', 'b', false)", "DISCARD ALL", "DEALLOCATE ALL", "LISTEN chan",
		"CREATE TEMP TABLE t (a int)", "SELECT pg_advisory_lock(1)", "BEGIN; SET LOCAL x = 1; COMMIT",
		"(SELECT 1)", "/* unterminated", "SELECT ';set'", "PREPARE p AS SELECT 1",
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		w := firstWord(s)
		for _, c := range []byte(w) {
			require.True(t, c >= 'a' && c <= 'z' || c == '_', "%q", w)
		}
		e := sqlEffects(s)
		if w == "set" || w == "reset" {
			require.True(t, e.settings)
		}
		if w == "discard" || w == "deallocate" || w == "listen" {
			require.True(t, e.session)
		}
		for _, n := range customNames(s) {
			require.True(t, validCustomName(n), n)
			require.Equal(t, strings.ToLower(n), n)
			require.Contains(t, strings.ToLower(s), n)
		}
		// Neither case nor a leading comment hides what a statement does.
		require.Equal(t, e, sqlEffects(upperASCII(s)))
		p := sqlEffects("/* a comment */ " + s)
		require.Equal(t, p, p.or(e))
		require.Equal(t, firstWord(s), firstWord("-- a comment\n\t"+s))
	})
}

// fakeConn is a client's socket: it reads what the client sent and keeps
// what it is told.
type fakeConn struct {
	r   io.Reader
	out bytes.Buffer
}

func (c *fakeConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *fakeConn) Write(b []byte) (int, error)      { return c.out.Write(b) }
func (c *fakeConn) Close() error                     { return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fakeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// encodeAll encodes frontend messages into one stream.
func encodeAll(msgs ...pgproto3.FrontendMessage) []byte {
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			panic(err)
		}
	}
	return b
}

// expectKind is the expect.kind build gives a message it sends.
func expectKind(m pgproto3.FrontendMessage) byte {
	switch m := m.(type) {
	case *pgproto3.Parse:
		return 'P'
	case *pgproto3.Bind:
		return 'B'
	case *pgproto3.Describe:
		if m.ObjectType == 'S' {
			return 'S'
		}
		return 'D'
	case *pgproto3.Execute:
		return 'E'
	case *pgproto3.Close:
		return 'C'
	case *pgproto3.Sync:
		return 'Y'
	case *pgproto3.Query, *pgproto3.FunctionCall:
		return 'Q'
	}
	return '?'
}

// fuzzBatchBytes is MaxBatchBytes in the fuzzing of the message loop.
const fuzzBatchBytes = 64 << 10

var (
	fuzzMetrics = newMetrics()
	// fuzzPrepared are the statements the server connection has at first:
	// nearly as many as it may keep.
	fuzzPrepared = func() []string {
		names := make([]string, maxServerStatements-2)
		for i := range names {
			names[i] = fmt.Sprintf("silo_%032x", i)
		}
		return names
	}()
)

// decodeBatches runs what the client sent through the endpoint's own
// decoding (its pgproto3.Backend with the endpoint's size cap), queue and
// build, as serve does up to the server: each batch that would go to a
// server connection is checked, and that connection's statements (have,
// nearly full so that some are evicted) are updated as the server's
// ParseComplete would. It returns what the client was told.
func decodeBatches(t *testing.T, data []byte) []byte {
	s := &Server{cfg: Config{MaxClients: 1, MaxMessageBytes: 4 << 10, MaxBatchBytes: fuzzBatchBytes}.withDefaults(),
		metrics: fuzzMetrics, shutdown: make(chan struct{})}
	nc := &fakeConn{r: bytes.NewReader(data)}
	c := newClientConn(s, nc)
	have, _ := simplelru.NewLRU[string, struct{}](maxServerStatements, nil)
	prepared := map[string]bool{} // what the server has: have, as the server sees it
	for _, name := range fuzzPrepared {
		have.Add(name, struct{}{})
		prepared[name] = true
	}
	send := func() {
		out, exps := c.build(have)
		checkBatch(t, out, exps, prepared)
		for _, e := range exps {
			if e.kind == 'P' && e.server != "" {
				have.Add(e.server, struct{}{})
			}
		}
		c.clearBatch()
	}
	for {
		msg, err := c.be.Receive()
		if err != nil {
			c.readFailed(err)
			return nc.out.Bytes()
		}
		ok := true
		switch m := msg.(type) {
		case *pgproto3.Query:
			c.fx = c.fx.or(sqlEffects(m.String))
			if ok = c.queue(m); ok {
				send()
			}
		case *pgproto3.FunctionCall, *pgproto3.Sync:
			if ok = c.queue(m); ok {
				send()
			}
		case *pgproto3.Parse, *pgproto3.Bind, *pgproto3.Describe, *pgproto3.Execute, *pgproto3.Close:
			ok = c.queue(m)
		case *pgproto3.Flush:
			send()
		case *pgproto3.Terminate:
			return nc.out.Bytes()
		case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail:
		default:
			c.fatal(fatalf(codeProtocolViolation, "invalid frontend message type %T", msg))
			return nc.out.Bytes()
		}
		if !ok {
			return nc.out.Bytes()
		}
		// What is held is bounded, its bookkeeping included.
		require.LessOrEqual(t, len(c.batch)+len(c.recs)*heldOverhead, fuzzBatchBytes)
		require.LessOrEqual(t, c.stmtBytes, fuzzBatchBytes)
		n := 0
		for name, st := range c.stmts {
			n += st.size(name)
		}
		require.Equal(t, n, c.stmtBytes)
	}
}

// messages splits a stream of protocol messages; it fails the test when
// the stream does not end where a message does.
func messages(t *testing.T, b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		require.GreaterOrEqual(t, len(b), 5, "a message's header")
		n := int(binary.BigEndian.Uint32(b[1:5]))
		require.GreaterOrEqual(t, n, 4)
		require.GreaterOrEqual(t, len(b), 1+n, "a message's body")
		out = append(out, b[:1+n])
		b = b[1+n:]
	}
	return out
}

// checkBatch checks what build lays out: well-formed messages, one
// expected answer each, no statement prepared twice on the server and none
// evicted that it lacks. prepared is what the server has, kept up to date.
func checkBatch(t *testing.T, out []byte, exps []expect, prepared map[string]bool) {
	msgs := messages(t, out)
	require.Len(t, exps, len(msgs), "one expected answer per message")
	for i, raw := range msgs {
		msg, err := pgproto3.NewBackend(bytes.NewReader(raw), io.Discard).Receive()
		require.NoError(t, err)
		require.Equal(t, string(expectKind(msg)), string(exps[i].kind), "message %d: %T", i, msg)
		switch m := msg.(type) {
		case *pgproto3.Parse:
			// A client names no statement on the server: the endpoint does.
			if m.Name != "" {
				require.True(t, strings.HasPrefix(m.Name, "silo_"), m.Name)
				require.False(t, prepared[m.Name], "prepared twice: %s", m.Name)
				prepared[m.Name] = true
			}
			require.Equal(t, m.Name, exps[i].server)
		case *pgproto3.Close:
			if exps[i].swallow {
				require.True(t, prepared[m.Name], "evicted: %s", m.Name)
				delete(prepared, m.Name)
			}
		}
	}
}

// A pgx client's first query, its statement cache's next, a pipeline, a
// COPY outside one, and the messages a client may not send.
var messageSeeds = [][]byte{
	encodeAll(
		&pgproto3.Parse{Name: "stmtcache_1", Query: "SELECT $1::int", ParameterOIDs: []uint32{23}},
		&pgproto3.Describe{ObjectType: 'S', Name: "stmtcache_1"}, &pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "stmtcache_1", ParameterFormatCodes: []int16{1},
			Parameters: [][]byte{{0, 0, 0, 42}}, ResultFormatCodes: []int16{1}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Query{String: "SET search_path = a; SELECT 1"}, &pgproto3.Terminate{}),
	encodeAll(
		&pgproto3.Parse{Query: "INSERT INTO t VALUES ($1)"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("1")}},
		&pgproto3.Execute{}, &pgproto3.Parse{Name: "a", Query: "SELECT 1"}, &pgproto3.Parse{Name: "a", Query: "SELECT 2"},
		&pgproto3.Bind{PreparedStatement: "a"}, &pgproto3.Execute{MaxRows: 1}, &pgproto3.Close{ObjectType: 'S', Name: "a"},
		&pgproto3.Close{ObjectType: 'P'}, &pgproto3.Flush{}, &pgproto3.Sync{}),
	encodeAll(&pgproto3.Parse{Name: "x", Query: "SELECT 1"}, &pgproto3.Parse{Name: "y", Query: "SELECT 2"},
		&pgproto3.Parse{Name: "z", Query: "SELECT 3"}, &pgproto3.Bind{PreparedStatement: "x"}, &pgproto3.Sync{},
		&pgproto3.Close{ObjectType: 'S', Name: "silo_00000000000000000000000000000001"}, &pgproto3.Sync{}),
	encodeAll(&pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.CopyDone{}, &pgproto3.CopyFail{Message: "x"},
		&pgproto3.FunctionCall{Function: 2078, Arguments: [][]byte{[]byte("a"), []byte("b"), {0}}}, &pgproto3.Sync{}),
	append(encodeAll(&pgproto3.Query{String: "SELECT 1"}), 'Z', 0, 0, 0, 4),
	{'Q', 0, 0, 0, 2},
	{'P', 0x7f, 0, 0, 0},
}

func FuzzMessages(f *testing.F) {
	for _, s := range messageSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// What the client is told is well-formed.
		for _, raw := range messages(t, decodeBatches(t, data)) {
			_, err := pgproto3.NewFrontend(bytes.NewReader(raw), io.Discard).Receive()
			require.NoError(t, err)
		}
	})
}

func TestCustomNames(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		sql  string
		want []string
	}{
		{"SET app.user_id = 'alice'", []string{"app.user_id"}},
		{"SELECT set_config('App.User_Id', $1, false), pg_catalog.now()", []string{"app.user_id", "pg_catalog.now"}},
		{"SET a.b.c = 1; SET x.1 = 2; SET 1.x = 3; SET .a = 4; SET a$.b$ = 5", []string{"a.b.c", "a$.b$"}},
		{"SET search_path = public", nil},
		{`SET "app"."user id" = 1`, nil},
	} {
		require.Equal(t, tt.want, customNames(tt.sql), tt.sql)
	}
}
