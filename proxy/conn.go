package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/silo-db/silo/router"
)

// flushBytes is how much of a result is buffered before it is written to
// the client, so a large result streams through in bounded memory.
const flushBytes = 64 << 10

// maxServerStatements bounds the statements the endpoint keeps prepared on
// one server connection; the least recently used is closed past it.
const maxServerStatements = 1000

// heldOverhead is what the endpoint keeps of each message of a batch, and
// of each named statement and run-time parameter, besides its bytes: a
// message's rec and expect (48 bytes each) and their slices' growth. It
// counts against MaxBatchBytes: uncounted, 7-byte messages (Describe,
// Close) held 14 bytes of bookkeeping for each byte of the cap, some 900
// MB for the default 64 MiB.
const heldOverhead = 128

// reported are the parameters a client is told at startup, as a session of
// the tenant's reports them (those the server has).
var reported = []string{
	"application_name", "client_encoding", "DateStyle", "default_transaction_read_only", "in_hot_standby",
	"integer_datetimes", "IntervalStyle", "is_superuser", "scram_iterations", "search_path", "server_encoding",
	"server_version", "session_authorization", "standard_conforming_strings", "TimeZone",
}

// clientConn is one client connection.
type clientConn struct {
	srv    *Server
	nc     net.Conn
	be     *pgproto3.Backend
	wmu    sync.Mutex // writes to the client (two goroutines in session mode)
	unsent int        // bytes sent to be but not flushed

	tenant  string
	session bool
	pid     uint32
	secret  []byte
	// params are the run-time parameters the client's session has: from
	// its startup packet, then as the server reports them.
	params map[string]string
	stmts  map[string]*stmt // the client's named prepared statements
	// stmtBytes is what stmts holds, bounded by MaxBatchBytes.
	stmtBytes int
	tx        byte // the transaction status last told the client

	mu     sync.Mutex
	lease  *router.Lease // held while a transaction is open (always, in session mode)
	killed bool

	// Extended-protocol messages received since the last Sync or Flush.
	batch    []byte
	recs     []rec
	skipping bool    // a failed batch: messages are dropped until Sync
	fx       effects // of the statements since the lease was taken
	answered bool    // the server answered a message of the batch being relayed
	// names are the custom parameters (app.user_id) those statements may
	// have set: pg_settings does not list them, so they are read back by
	// name.
	names map[string]struct{}
	// unnamed is what the last Parse of the unnamed statement may do when
	// it is bound.
	unnamed stmtEffects
}

// stmtEffects is what a statement's text may do to its session, and the
// custom parameters it names.
type stmtEffects struct {
	fx    effects
	names []string
}

func newStmtEffects(sql string) stmtEffects {
	e := stmtEffects{fx: sqlEffects(sql)}
	if e.fx.settings {
		e.names = customNames(sql)
	}
	return e
}

// maxNames bounds the custom parameters read back after one transaction.
const maxNames = 100

// note records what a statement run in the transaction may do, for its
// end.
func (c *clientConn) note(e stmtEffects) {
	c.fx = c.fx.or(e.fx)
	for _, n := range e.names {
		if len(c.names) < maxNames {
			c.names[n] = struct{}{}
		}
	}
}

// stmt is a client's named prepared statement.
type stmt struct {
	server  string // its name on server connections
	parse   []byte // a Parse of it under that name
	unnamed []byte // a Parse of it as the unnamed statement
	// fx is what it may do each time it runs: noted at each Bind, since
	// a driver's statement cache parses once and binds many times.
	fx stmtEffects
}

// rec is one message of a batch: bytes [start, end) of batch.
type rec struct {
	kind       byte // the message type
	start, end int
	st         *stmt  // the statement a Parse defines, or a Bind or Describe needs
	client     string // a Parse's client name
}

// expect is a response the server owes.
type expect struct {
	kind    byte // 'P' parse, 'B' bind, 'S' describe statement, 'D' describe portal, 'E' execute, 'C' close, 'Y' sync, 'Q' query
	swallow bool // a Parse of the endpoint's: its ParseComplete is not the client's
	server  string
	client  string
	st      *stmt
}

func newClientConn(s *Server, nc net.Conn) *clientConn {
	be := pgproto3.NewBackend(nc, nc)
	be.SetMaxBodyLen(s.cfg.MaxMessageBytes)
	return &clientConn{srv: s, nc: nc, be: be, stmts: map[string]*stmt{}, tx: 'I', names: map[string]struct{}{}}
}

func (c *clientConn) remote() string { return c.nc.RemoteAddr().String() }

// send writes one message to the client at once.
func (c *clientConn) send(msg pgproto3.BackendMessage) error {
	c.be.Send(msg)
	c.unsent = 0
	return c.be.Flush()
}

// fatal sends a FATAL error; the caller then closes the connection.
func (c *clientConn) fatal(err *sqlError) {
	err.fatal = true
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.send(err.response())
}

func (c *clientConn) ready() error {
	c.be.Send(&pgproto3.ReadyForQuery{TxStatus: c.tx})
	c.unsent = 0
	return c.be.Flush()
}

// welcome sends the parameters of a session of the tenant's, synced to the
// client's, and keeps the connection in session mode.
func (c *clientConn) welcome(ctx context.Context) error {
	l, err := c.srv.cfg.Router.Acquire(ctx, c.tenant)
	if err != nil {
		return err
	}
	l.Relay()
	conn := l.Conn()
	if err := c.syncParams(conn, nil); err != nil {
		l.Discard()
		return err
	}
	for _, name := range reported {
		if v := conn.PgConn().ParameterStatus(name); v != "" {
			c.be.Send(&pgproto3.ParameterStatus{Name: name, Value: v})
		}
	}
	if c.session {
		c.lease = l
		return nil
	}
	l.Release(nil)
	return nil
}

// syncParams makes conn's session parameters the client's: the changes
// are sent ahead of batch (nil: alone), and their answers read and
// dropped. A parameter refused is returned as the server's error.
func (c *clientConn) syncParams(conn *pgx.Conn, batch []byte) error {
	state := router.SessionParams(conn)
	var pre []byte
	rfqs := 0
	if !sameParams(state, c.params) {
		reset := false
		for k := range state {
			if _, ok := c.params[k]; !ok {
				reset = true
			}
		}
		if reset {
			pre, _ = (&pgproto3.Query{String: "RESET ALL"}).Encode(pre)
			rfqs++
		}
		var set []string
		for k, v := range c.params {
			if reset || state[k] != v {
				set = append(set, k, v)
			}
		}
		if len(set) > 0 {
			pre, _ = (&pgproto3.Parse{Query: "SELECT pg_catalog.set_config($1, $2, false)"}).Encode(pre)
			for i := 0; i < len(set); i += 2 {
				pre, _ = (&pgproto3.Bind{Parameters: [][]byte{[]byte(set[i]), []byte(set[i+1])}}).Encode(pre)
				pre, _ = (&pgproto3.Execute{}).Encode(pre)
			}
			pre, _ = (&pgproto3.Sync{}).Encode(pre)
			rfqs++
		}
		router.SetSessionParams(conn, copyParams(c.params))
	}
	if rfqs == 0 {
		if batch != nil {
			return writeServer(conn, batch)
		}
		return nil
	}
	if err := writeServer(conn, append(pre, batch...)); err != nil {
		return err
	}
	var refused error
	for rfqs > 0 {
		msg, err := conn.PgConn().ReceiveMessage(context.Background())
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			if refused == nil {
				refused = pgconn.ErrorResponseToPgError(m)
			}
		case *pgproto3.ReadyForQuery:
			rfqs--
		}
	}
	if refused != nil {
		router.SetSessionParams(conn, map[string]string{"": "unknown"}) // reset by the next borrower
		return refused
	}
	return nil
}

// refreshSQL reads back what a session's statements set: the parameters
// pg_settings lists, and the custom ones ($1, names separated by commas),
// which it does not. It runs with the client's search_path: every
// function and operator is pg_catalog's, named so (an operator of the
// tenant's named = took the place of the comparison on search_path =
// evil, pg_catalog, and chose what was read back).
const refreshSQL = `SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings
WHERE source OPERATOR(pg_catalog.=) 'session'
UNION ALL
SELECT n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest(pg_catalog.string_to_array($1, ',')) n`

// refreshParams reads conn's session parameters back into the client's,
// after a statement that may have changed them.
func (c *clientConn) refreshParams(conn *pgx.Conn) error {
	var names []string
	for n := range c.names {
		names = append(names, n)
	}
	for n := range c.params {
		if _, ok := c.names[n]; !ok && strings.Contains(n, ".") {
			names = append(names, n)
		}
	}
	buf, _ := (&pgproto3.Parse{Query: refreshSQL}).Encode(nil)
	buf, _ = (&pgproto3.Bind{Parameters: [][]byte{[]byte(strings.Join(names, ","))}}).Encode(buf)
	buf, _ = (&pgproto3.Execute{}).Encode(buf)
	buf, _ = (&pgproto3.Sync{}).Encode(buf)
	if err := writeServer(conn, buf); err != nil {
		return err
	}
	params := map[string]string{}
	var refused error
	held := 0
	for {
		msg, err := conn.PgConn().ReceiveMessage(context.Background())
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if len(m.Values) == 2 && m.Values[0] != nil && m.Values[1] != nil {
				params[string(m.Values[0])] = string(m.Values[1])
				// Kept for the client, and synced to each connection it
				// takes: bounded as its batches are.
				if held += len(m.Values[0]) + len(m.Values[1]) + heldOverhead; held > c.srv.cfg.MaxBatchBytes && refused == nil {
					refused = fatalf(codeProgramLimit, "the session's run-time parameters take more than %d bytes", c.srv.cfg.MaxBatchBytes)
					params = map[string]string{}
				}
			}
		case *pgproto3.ErrorResponse:
			refused = pgconn.ErrorResponseToPgError(m)
		case *pgproto3.ReadyForQuery:
			if refused != nil {
				return refused
			}
			c.params = params
			router.SetSessionParams(conn, copyParams(params))
			return nil
		}
	}
}

func sameParams(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func copyParams(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// writeServer writes encoded messages to conn's socket. The endpoint
// writes only between pgconn's own operations, when its buffer is empty.
func writeServer(conn *pgx.Conn, buf []byte) error {
	_, err := conn.PgConn().Conn().Write(buf)
	return err
}

// serve runs the client's session until it ends.
func (c *clientConn) serve() {
	c.srv.metrics.clients.Inc()
	defer c.srv.metrics.clients.Dec()
	if c.session {
		c.serveSession()
		return
	}
	defer c.end()
	for {
		msg, err := c.be.Receive()
		if err != nil {
			c.readFailed(err)
			return
		}
		ok := true
		switch m := msg.(type) {
		case *pgproto3.Query:
			if c.skipping {
				continue
			}
			c.srv.metrics.queries.Inc()
			c.note(newStmtEffects(m.String))
			ok = c.queue(m) && c.exchange(true)
		case *pgproto3.FunctionCall:
			if c.skipping {
				continue
			}
			// A function by its oid, with no SQL to read: it may set
			// anything (set_config, a custom parameter), and its session
			// is not pooled after it.
			c.note(stmtEffects{fx: effects{settings: true, session: true}})
			ok = c.queue(m) && c.exchange(true)
		case *pgproto3.Parse, *pgproto3.Bind, *pgproto3.Describe, *pgproto3.Execute, *pgproto3.Close:
			if c.skipping {
				continue
			}
			ok = c.queue(m)
		case *pgproto3.Sync:
			if c.skipping {
				c.skipping = false
				ok = c.ready() == nil
				continue
			}
			ok = c.queue(m) && c.exchange(true)
		case *pgproto3.Flush:
			if c.skipping {
				continue
			}
			ok = c.exchange(false)
		case *pgproto3.Terminate:
			return
		case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail:
			// Outside a COPY (one that failed): dropped, as PostgreSQL does.
		default:
			c.srv.metrics.protocolErrors.Inc()
			c.fatal(fatalf(codeProtocolViolation, "invalid frontend message type %T", msg))
			return
		}
		if !ok {
			return
		}
		if c.lease == nil && c.shuttingDown() {
			c.fatal(fatalf(codeAdminShutdown, "terminating connection due to administrator command"))
			return
		}
	}
}

func (c *clientConn) shuttingDown() bool {
	select {
	case <-c.srv.shutdown:
		return true
	default:
		return false
	}
}

// readFailed ends a session whose client sent what cannot be read.
func (c *clientConn) readFailed(err error) {
	if isEOF(err) || c.isKilled() {
		return
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() && c.shuttingDown() {
		c.fatal(fatalf(codeAdminShutdown, "terminating connection due to administrator command"))
		return
	}
	c.srv.metrics.protocolErrors.Inc()
	if se, ok := errors.AsType[*sqlError](protocolError(err)); ok {
		c.fatal(se)
	}
}

func isEOF(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return true
	}
	ne, ok := errors.AsType[*net.OpError](err)
	return ok && !ne.Timeout()
}

// queue adds a message to the batch, its prepared statement renamed to
// the server's name. It returns false when the batch is too large (the
// client is told, and the connection ends).
func (c *clientConn) queue(msg pgproto3.FrontendMessage) bool {
	r := rec{start: len(c.batch)}
	var err error
	switch m := msg.(type) {
	case *pgproto3.Parse:
		r.kind = 'P'
		if m.Name != "" {
			st := newStmt(m)
			c.setStmt(m.Name, st)
			r.st, r.client = st, m.Name
			c.batch = append(c.batch, st.parse...)
			c.note(st.fx)
		} else {
			c.batch, err = m.Encode(c.batch)
			c.unnamed = newStmtEffects(m.Query)
			c.note(c.unnamed)
		}
	case *pgproto3.Bind:
		r.kind = 'B'
		if st := c.stmts[m.PreparedStatement]; m.PreparedStatement != "" && st != nil {
			// What the statement does, it does each time it runs: pgx,
			// for one, parses a statement in a transaction of its own,
			// and later transactions only bind it.
			r.st = st
			b := *m
			b.PreparedStatement = st.server
			c.batch, err = b.Encode(c.batch)
			c.note(st.fx)
		} else {
			c.batch, err = m.Encode(c.batch)
			if m.PreparedStatement == "" {
				c.note(c.unnamed)
			}
		}
	case *pgproto3.Describe:
		r.kind = 'D'
		if st := c.stmts[m.Name]; m.ObjectType == 'S' && m.Name != "" && st != nil {
			r.kind, r.st = 'S', st
			c.batch, err = (&pgproto3.Describe{ObjectType: 'S', Name: st.server}).Encode(c.batch)
		} else {
			if m.ObjectType == 'S' {
				r.kind = 'S'
			}
			c.batch, err = m.Encode(c.batch)
		}
	case *pgproto3.Close:
		r.kind = 'C'
		if _, ok := c.stmts[m.Name]; m.ObjectType == 'S' && m.Name != "" && ok {
			// The server's statement may serve other clients: it stays,
			// and the Close goes to a name nothing has, which PostgreSQL
			// answers with CloseComplete in its turn.
			c.setStmt(m.Name, nil)
			c.batch, err = (&pgproto3.Close{ObjectType: 'S', Name: "silo_closed"}).Encode(c.batch)
		} else if m.ObjectType == 'S' && strings.HasPrefix(m.Name, "silo_") {
			// One of the endpoint's, by its server name (a client reads
			// them in pg_prepared_statements): closed, it would fail the
			// other clients' statements on this connection.
			c.batch, err = (&pgproto3.Close{ObjectType: 'S', Name: "silo_closed"}).Encode(c.batch)
		} else {
			c.batch, err = m.Encode(c.batch)
		}
	case *pgproto3.Execute:
		r.kind = 'E'
		c.srv.metrics.queries.Inc()
		c.batch, err = m.Encode(c.batch)
	case *pgproto3.Sync:
		r.kind = 'Y'
		c.batch, err = m.Encode(c.batch)
	case *pgproto3.Query:
		r.kind = 'Q'
		c.batch, err = m.Encode(c.batch)
	case *pgproto3.FunctionCall:
		r.kind = 'Q'
		c.batch, err = m.Encode(c.batch)
	}
	if err != nil {
		c.fatal(fatalf(codeProtocolViolation, "invalid message: %v", err))
		return false
	}
	r.end = len(c.batch)
	c.recs = append(c.recs, r)
	if len(c.batch)+len(c.recs)*heldOverhead > c.srv.cfg.MaxBatchBytes {
		c.fatal(fatalf(codeProgramLimit, "more than %d bytes of messages sent without a Sync", c.srv.cfg.MaxBatchBytes))
		return false
	}
	if c.stmtBytes > c.srv.cfg.MaxBatchBytes {
		c.fatal(fatalf(codeProgramLimit, "the named prepared statements take more than %d bytes: close some", c.srv.cfg.MaxBatchBytes))
		return false
	}
	return true
}

// setStmt gives the client's statement name to st (nil: none), and keeps
// count of what they hold.
func (c *clientConn) setStmt(name string, st *stmt) {
	if old := c.stmts[name]; old != nil {
		c.stmtBytes -= old.size(name)
		delete(c.stmts, name)
	}
	if st != nil {
		c.stmts[name] = st
		c.stmtBytes += st.size(name)
	}
}

// size is what the endpoint holds for a statement of that name.
func (st *stmt) size(name string) int {
	n := len(name) + len(st.server) + len(st.parse) + len(st.unnamed) + heldOverhead
	for _, p := range st.fx.names {
		n += len(p)
	}
	return n
}

func newStmt(m *pgproto3.Parse) *stmt {
	h := sha256.New()
	h.Write([]byte(m.Query))
	for _, oid := range m.ParameterOIDs {
		h.Write([]byte{0, byte(oid >> 24), byte(oid >> 16), byte(oid >> 8), byte(oid)})
	}
	st := &stmt{server: "silo_" + hex.EncodeToString(h.Sum(nil)[:16]), fx: newStmtEffects(m.Query)}
	p := *m
	p.Name = st.server
	st.parse, _ = p.Encode(nil)
	p.Name = ""
	st.unnamed, _ = p.Encode(nil)
	return st
}

// serverStmts returns the statements the endpoint prepared on conn.
func serverStmts(conn *pgx.Conn) *simplelru.LRU[string, struct{}] {
	const key = "silo.proxy.statements"
	if l, ok := conn.PgConn().CustomData()[key].(*simplelru.LRU[string, struct{}]); ok {
		return l
	}
	l, _ := simplelru.NewLRU[string, struct{}](maxServerStatements, nil)
	conn.PgConn().CustomData()[key] = l
	return l
}

// exchange sends the batch to the tenant's server connection (taken if the
// client holds none) and relays the answers. sync is whether the batch
// ends with a Sync or a Query (answered with ReadyForQuery); else it ends
// with a Flush. It returns false when the session must end.
func (c *clientConn) exchange(sync bool) bool {
	if len(c.recs) == 0 {
		return c.flush() == nil
	}
	if c.lease == nil && len(c.recs) == 1 && c.recs[0].kind == 'Y' {
		// A Sync alone, outside a transaction: nothing for the server.
		c.clearBatch()
		return c.ready() == nil
	}
	fresh := c.lease == nil
	if fresh {
		if err := c.acquire(); err != nil {
			return c.acquireFailed(err, sync)
		}
	}
	wasIdle := c.tx == 'I'
	for retry := 0; ; retry++ {
		c.answered = false
		conn := c.lease.Conn()
		out, exps := c.build(serverStmts(conn))
		err := c.sendBatch(conn, out, exps)
		if err == nil {
			break
		}
		if !fresh || c.answered || c.fx.commits || retry == maxResends || !endedBeforeAnswer(err) {
			c.clearBatch()
			return c.serverLost(err, wasIdle)
		}
		// The session was gone before it took the batch: nothing ran, and
		// the client has seen nothing. The batch goes to another.
		c.srv.log.Info("proxy: server connection ended before it answered; sending the batch again on another",
			"tenant", c.tenant, "shard", c.lease.Shard(), "err", err)
		c.srv.metrics.resends.Inc()
		c.discard()
		if err := c.acquire(); err != nil {
			return c.acquireFailed(err, sync)
		}
	}
	c.clearBatch()
	if err := c.flush(); err != nil {
		return false
	}
	if !sync || c.tx != 'I' {
		return true // the transaction goes on: the client keeps its connection
	}
	return c.endTransaction()
}

// maxResends bounds how many times one batch is sent again (see
// endedBeforeAnswer).
const maxResends = 8

// endedBeforeAnswer reports whether err, a batch's failure on a server
// connection that answered nothing of it, is the server ending the session
// (pg_terminate_backend, as a move's cutover does; a shutdown; an idle
// session timeout). The server answers a batch's messages in order, and
// what it answered is queued before its FATAL: a FATAL first means it had
// taken none of them, so none ran. A connection that just broke proves
// nothing of the kind (a statement may have committed before a crash) and
// is not resent.
func endedBeforeAnswer(err error) bool {
	pe, ok := errors.AsType[*pgconn.PgError](err)
	return ok && pe.Severity == "FATAL" && strings.HasPrefix(pe.Code, "57P")
}

// acquireFailed tells the client its batch could not get a server
// connection; sync as exchange's. It returns false when the session must
// end.
func (c *clientConn) acquireFailed(err error, sync bool) bool {
	c.clearBatch()
	se := fromSilo(err)
	if se.fatal {
		c.fatal(se)
		return false
	}
	c.be.Send(se.response())
	if !sync {
		c.skipping = true
		return c.flush() == nil
	}
	return c.ready() == nil
}

// endTransaction reads back what the transaction's statements may have set
// and gives the connection back. It returns false when the session must
// end: its parameters are more than the endpoint keeps.
func (c *clientConn) endTransaction() bool {
	conn := c.lease.Conn()
	fx := c.fx
	c.fx = effects{}
	defer clear(c.names)
	c.srv.metrics.transactions.Inc()
	if fx.settings {
		// What follows the client is read back first, even from a session
		// that must then be closed.
		if err := c.refreshParams(conn); err != nil {
			if se, ok := errors.AsType[*sqlError](err); ok {
				c.discard()
				c.fatal(se)
				return false
			}
			c.srv.log.Warn("proxy: session parameters not read back; the connection is closed", "tenant", c.tenant, "err", err)
			fx.session = true
		}
	}
	if fx.session {
		// Closed: it holds what must not reach the next borrower.
		c.discard()
		return true
	}
	c.release(nil)
	return true
}

func (c *clientConn) clearBatch() {
	c.batch = c.batch[:0]
	c.recs = c.recs[:0]
	if cap(c.batch) > 1<<20 {
		c.batch = nil // a large batch's buffer is not kept
	}
}

// build lays out the batch for a server connection that has the
// statements have (its serverStmts): a statement it lacks is prepared
// before its first use, and a Parse of one it has becomes a Parse of the
// unnamed statement (answered in turn, and changing nothing the client
// holds).
func (c *clientConn) build(have *simplelru.LRU[string, struct{}]) ([]byte, []expect) {
	var out []byte
	exps := make([]expect, 0, len(c.recs)+1)
	pending := map[string]bool{} // prepared in this batch
	for _, r := range c.recs {
		b := c.batch[r.start:r.end]
		switch r.kind {
		case 'P':
			if r.st == nil {
				exps = append(exps, expect{kind: 'P'})
				break
			}
			if have.Contains(r.st.server) || pending[r.st.server] {
				b = r.st.unnamed
				exps = append(exps, expect{kind: 'P', client: r.client, st: r.st})
				break
			}
			out = c.evict(have, out, &exps)
			pending[r.st.server] = true
			exps = append(exps, expect{kind: 'P', server: r.st.server, client: r.client, st: r.st})
		case 'B', 'S':
			if r.st != nil && !have.Contains(r.st.server) && !pending[r.st.server] {
				out = c.evict(have, out, &exps)
				out = append(out, r.st.parse...)
				pending[r.st.server] = true
				exps = append(exps, expect{kind: 'P', swallow: true, server: r.st.server})
				c.srv.metrics.reprepares.Inc()
			} else if r.st != nil {
				have.Get(r.st.server) // recently used
			}
			exps = append(exps, expect{kind: r.kind})
		default:
			exps = append(exps, expect{kind: r.kind})
		}
		out = append(out, b...)
	}
	return out, exps
}

// evict closes conn's least recently used statement when it has as many
// as it may keep.
func (c *clientConn) evict(have *simplelru.LRU[string, struct{}], out []byte, exps *[]expect) []byte {
	if have.Len() < maxServerStatements {
		return out
	}
	name, _, ok := have.RemoveOldest()
	if !ok {
		return out
	}
	out, _ = (&pgproto3.Close{ObjectType: 'S', Name: name}).Encode(out)
	*exps = append(*exps, expect{kind: 'C', swallow: true})
	return out
}

// sendBatch writes out (after the session's parameters are synced) and
// relays the answers to exps.
func (c *clientConn) sendBatch(conn *pgx.Conn, out []byte, exps []expect) error {
	if len(out) <= flushBytes {
		if err := c.syncParams(conn, out); err != nil {
			return err
		}
		return c.relay(conn, exps)
	}
	// A large batch is written while the answers are read: the server
	// answers as it reads, and would stop reading once we stopped.
	if err := c.syncParams(conn, nil); err != nil {
		return err
	}
	werr := make(chan error, 1)
	go func() { werr <- writeServer(conn, out) }()
	err := c.relay(conn, exps)
	if e := <-werr; err == nil {
		err = e
	}
	return err
}

// clientGone wraps a failure to write to the client: the session ends, and
// the server connection is closed rather than pooled.
type clientGone struct{ err error }

func (e clientGone) Error() string { return "client: " + e.err.Error() }

// forward sends a server message on to the client, flushing what is
// buffered when it is large.
func (c *clientConn) forward(msg pgproto3.BackendMessage) error {
	c.be.Send(msg)
	switch m := msg.(type) {
	case *pgproto3.DataRow:
		for _, v := range m.Values {
			c.unsent += len(v) + 4
		}
	case *pgproto3.CopyData:
		c.unsent += len(m.Data) + 5
	default:
		c.unsent += 64
	}
	if c.unsent >= flushBytes {
		return c.flush()
	}
	return nil
}

func (c *clientConn) flush() error {
	c.unsent = 0
	if err := c.be.Flush(); err != nil {
		return clientGone{err}
	}
	return nil
}

// relay reads the server's answers to exps and passes them on, dropping
// the answers to the endpoint's own messages.
func (c *clientConn) relay(conn *pgx.Conn, exps []expect) error {
	pg := conn.PgConn()
	have := serverStmts(conn)
	flushEach := len(exps) > 0 && exps[len(exps)-1].kind != 'Y' && exps[len(exps)-1].kind != 'Q'
	for len(exps) > 0 {
		msg, err := pg.ReceiveMessage(context.Background())
		if err != nil {
			return err
		}
		c.answered = true
		head := exps[0].kind
		forward, done := true, false
		switch m := msg.(type) {
		case *pgproto3.ParseComplete:
			e := exps[0]
			if e.server != "" {
				have.Add(e.server, struct{}{})
			}
			forward, done = !e.swallow, true
		case *pgproto3.CloseComplete:
			forward, done = !exps[0].swallow, true
		case *pgproto3.BindComplete, *pgproto3.NoData, *pgproto3.PortalSuspended:
			done = head != 'Q'
		case *pgproto3.RowDescription:
			done = head == 'S' || head == 'D'
		case *pgproto3.CommandComplete, *pgproto3.EmptyQueryResponse:
			done = head == 'E'
		case *pgproto3.ErrorResponse:
			if m.Code == "26000" || m.Code == "42P05" {
				// A prepared statement missing, or one in the way: the
				// endpoint's statements on this connection are not what it
				// thinks (a tenant's function ran DEALLOCATE, or PREPARE
				// with one of their names), and the connection is closed
				// rather than pooled, for the next client's sake.
				c.fx.session = true
			}
			if head != 'Q' {
				// The server skips to the next Sync: what it owed until
				// then is not coming. A Parse that failed defined nothing.
				for len(exps) > 0 && exps[0].kind != 'Y' {
					if e := exps[0]; e.client != "" && c.stmts[e.client] == e.st {
						c.setStmt(e.client, nil)
					}
					exps = exps[1:]
				}
			}
		case *pgproto3.ReadyForQuery:
			c.tx = m.TxStatus
			done = true
		case *pgproto3.ParameterStatus:
			c.params[m.Name] = m.Value
			params := copyParams(router.SessionParams(conn))
			params[m.Name] = m.Value
			router.SetSessionParams(conn, params)
		case *pgproto3.NotificationResponse:
			forward = false // under transaction pooling, nobody listens
		case *pgproto3.CopyInResponse:
			if err := c.forward(m); err != nil {
				return err
			}
			if err := c.flush(); err != nil {
				return err
			}
			if err := c.copyIn(conn); err != nil {
				return err
			}
			if head == 'E' {
				// PostgreSQL ignored the batch's Sync, sent during the
				// copy: the client sends another after CopyDone.
				for i := range exps {
					if exps[i].kind == 'Y' {
						exps = append(exps[:i], exps[i+1:]...)
						break
					}
				}
			}
			continue
		case *pgproto3.CopyBothResponse:
			return errors.New("COPY BOTH is not supported")
		}
		if forward {
			if err := c.forward(msg); err != nil {
				return err
			}
			if flushEach && !isRowData(msg) {
				if err := c.flush(); err != nil {
					return err
				}
			}
		}
		if done && len(exps) > 0 {
			exps = exps[1:]
		}
	}
	return nil
}

func isRowData(msg pgproto3.BackendMessage) bool {
	switch msg.(type) {
	case *pgproto3.DataRow, *pgproto3.CopyData:
		return true
	}
	return false
}

// copyIn passes the client's COPY data to the server until CopyDone or
// CopyFail.
func (c *clientConn) copyIn(conn *pgx.Conn) error {
	var buf []byte
	for {
		msg, err := c.be.Receive()
		if err != nil {
			return clientGone{err}
		}
		end := false
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			buf, _ = m.Encode(buf)
		case *pgproto3.CopyDone, *pgproto3.CopyFail:
			buf, _ = m.Encode(buf)
			end = true
		case *pgproto3.Flush, *pgproto3.Sync:
			// Ignored by the server during a copy.
			buf, _ = m.Encode(buf)
		default:
			// Any other message aborts the copy; PostgreSQL says so.
			buf, _ = (&pgproto3.CopyFail{Message: "unexpected message type during COPY from stdin"}).Encode(buf)
			end = true
		}
		if end || len(buf) >= flushBytes {
			if err := writeServer(conn, buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
		if end {
			return nil
		}
	}
}

// serverLost ends the client's part in a batch whose server connection
// failed (the shard went away, the breaker cut it off, the client went
// away). A client inside a transaction has lost it, and its session ends
// with FATAL, as with PostgreSQL; otherwise it is told the statement
// failed, and goes on.
func (c *clientConn) serverLost(err error, wasIdle bool) bool {
	if _, ok := errors.AsType[clientGone](err); ok {
		c.discard()
		return false
	}
	var se *sqlError
	switch {
	case c.lease.CutOff() != nil:
		se = fromSilo(c.lease.CutOff())
	default:
		if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
			se = fromSilo(pe)
		} else if _, ok := errors.AsType[*pgproto3.ExceededMaxBodyLenErr](err); ok {
			se = errorf(codeProgramLimit, "a message from the database was larger than the largest allowed (%d bytes)", c.srv.cfg.MaxMessageBytes)
		} else {
			se = errorf(codeConnectionFailure, "the connection to the tenant's database was lost: %v", err)
		}
	}
	c.srv.log.Warn("proxy: server connection lost", "tenant", c.tenant, "shard", c.lease.Shard(), "err", err)
	c.mu.Lock()
	l := c.lease
	c.lease = nil
	c.mu.Unlock()
	l.Release(err)
	c.fx = effects{}
	clear(c.names)
	if !wasIdle || se.fatal {
		c.fatal(se)
		return false
	}
	c.tx = 'I'
	c.be.Send(se.response())
	return c.ready() == nil
}

// acquire takes a server connection for the client.
func (c *clientConn) acquire() error {
	start := time.Now()
	l, err := c.srv.cfg.Router.AcquireWithin(context.Background(), c.tenant, c.srv.cfg.ServerWaitTimeout)
	c.srv.metrics.waitTime.Observe(time.Since(start).Seconds())
	if err != nil {
		return err
	}
	l.Relay()
	c.mu.Lock()
	c.lease = l
	killed := c.killed
	c.mu.Unlock()
	if killed {
		return fatalf(codeAdminShutdown, "terminating connection due to administrator command")
	}
	return nil
}

// release gives the server connection back to the pool.
func (c *clientConn) release(err error) {
	c.mu.Lock()
	l := c.lease
	c.lease = nil
	c.mu.Unlock()
	if l != nil {
		l.Release(err)
	}
}

// discard closes the server connection instead of pooling it.
func (c *clientConn) discard() {
	c.mu.Lock()
	l := c.lease
	c.lease = nil
	c.mu.Unlock()
	if l != nil {
		l.Discard()
	}
}

// end gives up what a session held when it ends: a transaction still open
// is rolled back with its connection.
func (c *clientConn) end() {
	if c.lease != nil {
		c.discard()
	}
}

// cancelQuery asks the shard to cancel what the client is running.
func (c *clientConn) cancelQuery() {
	c.mu.Lock()
	l := c.lease
	c.mu.Unlock()
	if l == nil {
		return
	}
	pg := l.Conn().PgConn()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := pg.CancelRequest(ctx); err != nil {
		c.srv.log.Warn("proxy: cancel request not delivered", "tenant", c.tenant, "err", err)
	}
}

// wakeIdle ends the wait of a client that holds no server connection, for
// Shutdown: its read fails at once.
func (c *clientConn) wakeIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lease == nil {
		_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

// kill closes the client's connection and its server connection's socket.
func (c *clientConn) kill() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.killed = true
	_ = c.nc.Close()
	if c.lease != nil {
		_ = c.lease.Conn().PgConn().Conn().Close()
	}
}

func (c *clientConn) isKilled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.killed
}
