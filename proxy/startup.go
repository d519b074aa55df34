package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// Codes of the startup packets that are not a StartupMessage.
const (
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	maxStartupPacket  = 10000 // PostgreSQL's MAX_STARTUP_PACKET_LENGTH
)

// PoolModeParam is the run-time parameter, in options (-c
// silo.pool_mode=session) or the startup packet, that chooses a client's
// pool mode: transaction (the default) or session.
const PoolModeParam = "silo.pool_mode"

// startupPacket is a parsed startup packet.
type startupPacket struct {
	code   uint32 // protocol version, or one of the request codes
	params map[string]string
	// A cancel request's target.
	pid    uint32
	secret []byte
}

// readStartup reads one startup packet, exactly: nothing after it is read,
// so bytes a client sent ahead of a TLS handshake are left to fail it (as
// PostgreSQL refuses them, CVE-2021-23222).
func readStartup(r io.Reader) (*startupPacket, error) {
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, err
	}
	n := int64(int32(binary.BigEndian.Uint32(head[:])))
	if n < 8 || n > maxStartupPacket {
		return nil, fatalf(codeProtocolViolation, "invalid length of startup packet")
	}
	buf := make([]byte, n-4)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	return parseStartup(buf)
}

// parseStartup parses a startup packet's body (after its length).
func parseStartup(buf []byte) (*startupPacket, error) {
	if len(buf) < 4 {
		return nil, fatalf(codeProtocolViolation, "invalid length of startup packet")
	}
	p := &startupPacket{code: binary.BigEndian.Uint32(buf)}
	rest := buf[4:]
	switch p.code {
	case codeSSLRequest, codeGSSENCRequest:
		if len(rest) != 0 {
			return nil, fatalf(codeProtocolViolation, "invalid length of startup packet")
		}
		return p, nil
	case codeCancelRequest:
		// 3.0 sends a 4-byte secret; 3.2 up to 256 bytes.
		if len(rest) < 8 || len(rest) > 4+256 {
			return nil, fatalf(codeProtocolViolation, "invalid length of cancel request")
		}
		p.pid = binary.BigEndian.Uint32(rest)
		p.secret = rest[4:]
		return p, nil
	}
	if p.code>>16 != 3 {
		return nil, fatalf(codeFeatureNotSupported, "unsupported frontend protocol %d.%d: server supports 3.0",
			p.code>>16, p.code&0xffff)
	}
	// Name-value pairs of NUL-terminated strings, and a final NUL.
	p.params = map[string]string{}
	for {
		name, r, ok := cutNul(rest)
		if !ok {
			return nil, fatalf(codeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
		}
		if name == "" {
			if len(r) != 0 {
				return nil, fatalf(codeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
			}
			return p, nil
		}
		value, r2, ok := cutNul(r)
		if !ok {
			return nil, fatalf(codeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
		}
		p.params[name] = value
		rest = r2
	}
}

func cutNul(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return "", nil, false
}

// parseOptions splits the options startup parameter as PostgreSQL does:
// arguments separated by spaces, a backslash escaping the next character;
// "-c name=value" and "--name=value" set parameters.
func parseOptions(s string) (map[string]string, error) {
	var args []string
	var cur strings.Builder
	inArg := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inArg = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		var kv string
		switch a := args[i]; {
		case a == "-c" && i+1 < len(args):
			i++
			kv = args[i]
		case strings.HasPrefix(a, "-c") && len(a) > 2:
			kv = a[2:]
		case strings.HasPrefix(a, "--"):
			kv = a[2:]
		default:
			return nil, fatalf(codeProtocolViolation, "invalid command-line argument for server process: %s", a)
		}
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return nil, fatalf(codeSyntaxError, "-c %s requires a value", kv)
		}
		out[strings.ReplaceAll(name, "-", "_")] = value
	}
	return out, nil
}

const codeSyntaxError = "42601"

// serveConn serves one client connection, from its first byte to its end.
func (s *Server) serveConn(nc net.Conn, overLimit bool) {
	defer nc.Close()
	start := time.Now()
	_ = nc.SetDeadline(start.Add(s.cfg.AuthTimeout))
	conn, p, err := s.negotiate(nc)
	if err != nil || p == nil {
		if se, ok := errors.AsType[*sqlError](err); ok {
			s.metrics.protocolErrors.Inc()
			writeFatal(nc, se)
		}
		return
	}
	if conn != nc {
		defer conn.Close()
	}
	c := newClientConn(s, conn)
	if overLimit {
		s.metrics.logins.WithLabelValues("refused").Inc()
		c.fatal(fatalf(codeTooManyConnections, "sorry, too many clients already"))
		return
	}
	select {
	case <-s.shutdown:
		c.fatal(fatalf(codeCannotConnectNow, "the server is shutting down"))
		return
	default:
	}
	if err := c.startup(p); err != nil {
		se := fromSilo(err)
		se.fatal = true
		if refusal(err) {
			// The client is told why even when the startup spent its
			// time (waiting for a server connection, for one) and the
			// socket's deadline has passed.
			_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		}
		c.fatal(se)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	s.metrics.loginTime.Observe(time.Since(start).Seconds())
	defer s.unregister(c)
	c.serve()
}

// refusal reports whether err is an answer to give the client (Silo's, the
// endpoint's or a shard's), not a failure of its connection.
func refusal(err error) bool {
	_, ours := errors.AsType[*silo.Error](err)
	_, endpoint := errors.AsType[*sqlError](err)
	_, shard := errors.AsType[*pgconn.PgError](err)
	return ours || endpoint || shard
}

// negotiate reads startup packets until a StartupMessage, answering TLS
// and GSSAPI encryption requests, and serves a cancel request (returning
// nil, nil, nil). The connection it returns is TLS if the client asked and
// the server has a certificate.
func (s *Server) negotiate(nc net.Conn) (net.Conn, *startupPacket, error) {
	conn := nc
	tlsDone, gssDone := false, false
	for {
		p, err := readStartup(conn)
		if err != nil {
			return nil, nil, err
		}
		switch p.code {
		case codeSSLRequest:
			if tlsDone {
				return nil, nil, fatalf(codeProtocolViolation, "SSLRequest sent twice")
			}
			tlsDone = true
			if s.cfg.TLS == nil {
				if _, err := conn.Write([]byte{'N'}); err != nil {
					return nil, nil, err
				}
				continue
			}
			if _, err := conn.Write([]byte{'S'}); err != nil {
				return nil, nil, err
			}
			tc := tls.Server(conn, s.cfg.TLS)
			if err := tc.Handshake(); err != nil {
				s.log.Debug("proxy: TLS handshake failed", "remote", nc.RemoteAddr().String(), "err", err)
				return nil, nil, err
			}
			conn = tc
		case codeGSSENCRequest:
			// No GSSAPI here: the client goes on without it, or with TLS.
			if gssDone {
				return nil, nil, fatalf(codeProtocolViolation, "GSSENCRequest sent twice")
			}
			gssDone = true
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return nil, nil, err
			}
		case codeCancelRequest:
			s.cancel(p.pid, p.secret)
			return nil, nil, nil
		default:
			return conn, p, nil
		}
	}
}

// cancel serves a cancel request: the client with that process id and
// secret key has the query it is running on its shard cancelled. Like
// PostgreSQL, it answers nothing either way.
func (s *Server) cancel(pid uint32, secret []byte) {
	s.mu.Lock()
	c := s.clients[pid]
	s.mu.Unlock()
	if c == nil || subtle.ConstantTimeCompare(c.secret, secret) != 1 {
		s.metrics.cancels.WithLabelValues("refused").Inc()
		return
	}
	s.metrics.cancels.WithLabelValues("ok").Inc()
	c.cancelQuery()
}

// writeFatal sends err to a client that has no protocol state yet.
func writeFatal(w io.Writer, err *sqlError) {
	err.fatal = true
	buf, e := err.response().Encode(nil)
	if e == nil {
		_, _ = w.Write(buf)
	}
}

// startup checks the client's startup parameters, authenticates it and
// sends it the parameters of a real session, synced to its own.
func (c *clientConn) startup(p *startupPacket) error {
	s := c.srv
	if p.code != pgproto3.ProtocolVersion30 {
		// 3.2 and later: 3.0 is what is spoken here.
		if err := c.send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: pqOptions(p.params)}); err != nil {
			return err
		}
	} else if opts := pqOptions(p.params); len(opts) > 0 {
		if err := c.send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: opts}); err != nil {
			return err
		}
	}
	user := p.params["user"]
	if user == "" {
		return fatalf(codeInvalidAuthSpec, "no PostgreSQL user name specified in startup packet")
	}
	database := p.params["database"]
	if database == "" {
		database = user
	}
	if _, ok := p.params["replication"]; ok && p.params["replication"] != "false" && p.params["replication"] != "0" {
		return fatalf(codeFeatureNotSupported, "replication connections are not supported")
	}
	desired := map[string]string{}
	for k, v := range p.params {
		switch {
		case k == "user" || k == "database" || k == "replication" || strings.HasPrefix(k, "_pq_."):
		case k == "options":
			opts, err := parseOptions(v)
			if err != nil {
				return err
			}
			for ok, ov := range opts {
				desired[ok] = ov
			}
		default:
			desired[k] = v
		}
	}
	if mode, ok := desired[PoolModeParam]; ok {
		delete(desired, PoolModeParam)
		switch mode {
		case "transaction":
		case "session":
			c.session = true
		default:
			return fatalf("22023", "invalid value for parameter %q: %q (transaction or session)", PoolModeParam, mode)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.AuthTimeout)
	defer cancel()
	login, err := s.login(ctx, user)
	if err != nil {
		s.metrics.logins.WithLabelValues("unavailable").Inc()
		return err
	}
	keyID, err := c.authenticate(user, login)
	if err != nil {
		s.metrics.logins.WithLabelValues("refused").Inc()
		s.log.Info("proxy: login refused", "remote", c.remote(), "user", truncate(user, 64), "err", err)
		return err
	}
	// The key is good for its own tenant's database only; telling the
	// client so would say that the tenant exists.
	if database != user {
		s.metrics.logins.WithLabelValues("refused").Inc()
		s.log.Info("proxy: login refused", "remote", c.remote(), "user", user, "reason", "database is not the key's tenant")
		return authFailed(user)
	}
	switch login.State {
	case silo.TenantSuspended:
		s.metrics.logins.WithLabelValues("suspended").Inc()
		return &sqlError{fatal: true, code: codeNotInPrerequisite, message: fmt.Sprintf("tenant %q is suspended", user),
			hint: "A suspended tenant's database accepts no connections until it is resumed."}
	case silo.TenantProvisioning:
		s.metrics.logins.WithLabelValues("unavailable").Inc()
		return fatalf(codeCannotConnectNow, "tenant %q is still being created", user)
	}
	s.cfg.Logins.TouchKey(ctx, keyID)
	c.tenant = user
	c.params = desired
	if err := c.send(&pgproto3.AuthenticationOk{}); err != nil {
		return err
	}
	// A real session of the tenant's, synced to the client's parameters,
	// says what the client is told: the server's version and encoding, and
	// its own settings as the server took them. Invalid ones fail here, as
	// they would on PostgreSQL.
	if err := c.welcome(ctx); err != nil {
		s.metrics.logins.WithLabelValues("unavailable").Inc()
		return err
	}
	s.register(c)
	if err := c.send(&pgproto3.BackendKeyData{ProcessID: c.pid, SecretKey: c.secret}); err != nil {
		return err
	}
	s.metrics.logins.WithLabelValues("ok").Inc()
	s.log.Debug("proxy: client connected", "tenant", c.tenant, "remote", c.remote(), "session", c.session)
	return c.ready()
}

// pqOptions lists the protocol options (_pq_.*) a client asked for; none
// is known here.
func pqOptions(params map[string]string) []string {
	var out []string
	for k := range params {
		if strings.HasPrefix(k, "_pq_.") {
			out = append(out, k)
		}
	}
	return out
}

// login reads a tenant's login from the catalog, or while the catalog is
// down, from what it said within LoginCacheTTL. A tenant the catalog does
// not know gets nil: it is refused like a wrong key.
func (s *Server) login(ctx context.Context, user string) (*shardmap.TenantLogin, error) {
	if silo.ValidateTenantID(user) != nil {
		return nil, nil
	}
	l, err := s.cfg.Logins.GetTenantLogin(ctx, user)
	switch {
	case err == nil:
		s.logins.Add(user, l)
		return l, nil
	case silo.ErrorCode(err) == silo.ENOTFOUND:
		s.logins.Remove(user)
		return nil, nil
	case silo.ErrorCode(err) == silo.EUNAVAILABLE || silo.ErrorCode(err) == silo.ETIMEOUT:
		if cached, ok := s.logins.Get(user); ok && s.cfg.LoginCacheTTL > 0 {
			return cached, nil
		}
		return nil, fatalf(codeCannotConnectNow, "the tenant directory is unavailable; retry shortly")
	}
	s.log.Error("proxy: read a tenant's login", "tenant", user, "err", err)
	return nil, fatalf(codeInternal, "could not read the login")
}

// mockSalt is the salt shown for a tenant id with no login: the same for
// the same id on every server, as a real tenant's is.
func (s *Server) mockSalt(user string) []byte {
	m := hmac.New(sha256.New, s.cfg.MockSecret)
	m.Write([]byte("silo scram mock salt\x00" + user))
	return m.Sum(nil)[:shardmap.ScramSaltLen]
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
