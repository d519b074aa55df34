package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/labstack/echo/v4"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/router"
)

// Router runs work on a tenant's own database, as the tenant's own role;
// *router.Router implements it. Its errors are ENOTFOUND for unknown,
// deleted and purged tenants, ESUSPENDED, EUNAVAILABLE when no connection
// comes in time, or fn's error. The data API expects the router's limits
// on tenant connections (router.Config.MaxMessageBytes) and resets every
// session it used before it lets the connection go (see session).
type Router interface {
	WithTenant(ctx context.Context, tenantID string, fn func(*pgx.Conn) error) error
	// ShardStats is the router's connections to a shard and its breaker,
	// for the shard endpoints' pool.
	ShardStats(shard string) (router.ShardStats, bool)
}

// MaxStatements is the most statements one transaction call may hold.
const MaxStatements = 100

// retryAfterSeconds is the Retry-After of the data API's 503s.
const retryAfterSeconds = 2

// statementBody is Statement as the server reads it: parameters stay raw
// JSON, so numbers keep their exact text.
type statementBody struct {
	SQL    string            `json:"sql"`
	Params []json.RawMessage `json:"params"`
}

type transactionBody struct {
	Statements []statementBody `json:"statements"`
}

// queryResult is QueryResult with its rows already encoded, as they were
// measured against the size limit.
type queryResult struct {
	Columns      []string          `json:"columns"`
	Rows         []json.RawMessage `json:"rows"`
	RowsAffected int64             `json:"rowsAffected"`
	Truncated    bool              `json:"truncated"`
}

// appendJSON appends r as JSON, as json.Marshal would write it: its rows
// are JSON already, and encoding/json would only parse them again. This is
// the data API's hot path.
func (r *queryResult) appendJSON(b []byte) []byte {
	b = append(slices.Grow(b, r.size()), `{"columns":[`...)
	for i, c := range r.Columns {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, c)
	}
	b = append(b, `],"rows":[`...)
	for i, row := range r.Rows {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, row...)
	}
	b = append(b, `],"rowsAffected":`...)
	b = strconv.AppendInt(b, r.RowsAffected, 10)
	b = append(b, `,"truncated":`...)
	b = strconv.AppendBool(b, r.Truncated)
	return append(b, '}')
}

// size is about the length of r's JSON, to size its buffer.
func (r *queryResult) size() int {
	n := 64
	for _, c := range r.Columns {
		n += len(c) + 3
	}
	for _, row := range r.Rows {
		n += len(row) + 1
	}
	return n
}

// appendJSONString appends s as a JSON string: plain ASCII as it is, and
// anything else through encoding/json, which escapes it.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			enc, _ := json.Marshal(s) // a string always encodes
			return append(b, enc...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

type transactionResult struct {
	Results []queryResult `json:"results"`
}

// appendJSON appends t as JSON, as queryResult.appendJSON does.
func (t *transactionResult) appendJSON(b []byte) []byte {
	size := 16
	for _, r := range t.Results {
		size += r.size()
	}
	b = append(slices.Grow(b, size), `{"results":[`...)
	for i, r := range t.Results {
		if i > 0 {
			b = append(b, ',')
		}
		b = r.appendJSON(b)
	}
	return append(b, "]}"...)
}

// statementError is a failed data API call, with what its problem shows
// beyond the code and message: the PostgreSQL error and, in a transaction,
// the index of the failed statement.
type statementError struct {
	err   *silo.Error
	index *int
	pg    *pgconn.PgError
}

func (e *statementError) Error() string { return e.err.Error() }
func (e *statementError) Unwrap() error { return e.err }

// statement is a statement ready to send: its SQL, its parameters as text
// (nil is NULL), and whether to prepare it (see Server.prepares).
type statement struct {
	sql     string
	params  [][]byte
	prepare bool
}

// unprepared returns st to be sent unnamed.
func (st statement) unprepared() statement {
	st.prepare = false
	return st
}

// textFormat asks for every result column as text, which jsonValue reads.
var textFormat = []int16{pgx.TextFormatCode}

// Prepared statements: a tenant's statement of up to preparedMaxSQL bytes
// is prepared once it is seen again among the last seenStatements
// statements of all tenants (see Server.prepares). A connection keeps the
// maxPrepared it used last: the reset's check reads every prepared
// statement of the session, about a microsecond each.
const (
	preparedMaxSQL = 8 << 10
	seenStatements = 1 << 16
	maxPrepared    = 64
)

// prepares chooses how a tenant's statement is sent. The first time,
// unnamed: the parameters go as text with no type, PostgreSQL infers each
// one's type from the statement, and nothing is kept on the server, as
// suits SQL that may be anything and may run once. A statement the tenant
// sent before, among the recent ones, is prepared on each connection that
// runs it, in the same round trip as its first run, and kept there (see
// session): PostgreSQL then skips parsing and planning it, most of its work
// for a point select. Its parameters still go as text and PostgreSQL still
// infers their types, from the same Parse, so the two answer alike. As with
// JDBC's prepareThreshold, SQL that carries its values as literals, new
// text each time, never fills a connection's statements.
func (s *Server) prepares(tenant, sql string) bool {
	if len(sql) > preparedMaxSQL {
		s.unnamed.Inc()
		return false
	}
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString(tenant)
	h.WriteByte(0)
	h.WriteString(sql)
	k := h.Sum64()
	if _, ok := s.seen.Get(k); ok {
		s.prepared.Inc()
		return true
	}
	s.seen.Add(k, struct{}{})
	s.unnamed.Inc()
	return false
}

// errCopy refuses COPY … FROM STDIN and TO STDOUT: the data API has no
// way to carry a copy's data. Statements that start with COPY are refused
// before they are sent; any other that starts a copy on the shard (see
// router.ErrCopyRefused) is stopped there, its connection closed.
var errCopy = silo.Errorf(silo.EINVALID, "COPY is not supported through the data API: send rows with INSERT and read them with SELECT")

func parseStatement(b statementBody) (statement, error) {
	if strings.TrimSpace(b.SQL) == "" {
		return statement{}, silo.Errorf(silo.EINVALID, "sql is empty: send one SQL statement")
	}
	if leadingWords(b.SQL, 1)[0] == "copy" {
		return statement{}, errCopy
	}
	st := statement{sql: b.SQL, params: make([][]byte, len(b.Params))}
	for i, raw := range b.Params {
		v, err := paramOf(raw)
		if err != nil {
			return statement{}, silo.Errorf(silo.EMALFORMED, "params[%d] is not valid JSON: %v", i, err)
		}
		st.params[i] = v
	}
	return st, nil
}

// paramOf turns a JSON value into a text parameter: a string's text, a
// number's literal, true or false, nil (NULL) for null, and the JSON text
// of an array or object.
func paramOf(raw json.RawMessage) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, io.ErrUnexpectedEOF
	}
	switch raw[0] {
	case 'n':
		return nil, nil
	case '"':
		var s string
		err := json.Unmarshal(raw, &s)
		return []byte(s), err
	case '{', '[':
		var buf bytes.Buffer
		err := json.Compact(&buf, raw)
		return buf.Bytes(), err
	}
	return bytes.Clone(raw), nil // true, false, or a number's literal
}

// dataContext checks that the request may reach tenant id's data, and
// returns the context of the call, bounded by the query timeout.
func (s *Server) dataContext(c echo.Context, id string) (context.Context, context.CancelFunc, error) {
	if tenant, ok := c.Get(ctxKeyTenant).(string); ok && tenant != id {
		return nil, nil, silo.Errorf(silo.EFORBIDDEN, "the key is not valid for tenant %q", id)
	}
	if s.router == nil {
		return nil, nil, silo.Errorf(silo.EUNAVAILABLE, "the data API is not enabled on this server")
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), s.queryTimeout)
	return ctx, cancel, nil
}

// statementTimeout is the statement_timeout PostgreSQL gets, in
// milliseconds: what is left of ctx, less a tenth of the query timeout (at
// most a second). So PostgreSQL stops a slow statement itself, just before
// the deadline: its error comes back and the connection stays usable. The
// context's deadline is the backstop, for a shard that stops answering, a
// transaction whose statements run long together, or SQL that lifts the
// timeout (SET LOCAL statement_timeout = 0): pgx then closes the connection
// and sends PostgreSQL a cancel request for the statement, so nothing goes
// on running on the shard either way.
func (s *Server) statementTimeout(ctx context.Context) int64 {
	left := s.queryTimeout
	if deadline, ok := ctx.Deadline(); ok {
		left = time.Until(deadline)
	}
	left -= min(s.queryTimeout/10, time.Second)
	return max(1, left.Milliseconds())
}

// sessionTimeout is the statement_timeout the reset leaves on a session for
// the next call: a twentieth under what a call gets at its start, so that
// the next call finds it no larger than its own and within a tenth of it
// (session.timeoutFits), and sends nothing more.
func (s *Server) sessionTimeout() int64 {
	return max(1, (s.queryTimeout-min(s.queryTimeout/10, time.Second)).Milliseconds()*19/20)
}

// sessionKey is the key, in each tenant connection's pgconn CustomData, of
// the data API's *session on it. It lives and dies with the connection,
// and a connection serves one call at a time.
const sessionKey = "silo.session"

// session is what the data API keeps of a tenant connection.
type session struct {
	// stmts are the tenant's statements prepared on the connection, by SQL,
	// the least recently used evicted first; closing names the evicted ones,
	// closed in the next round trip.
	stmts   *simplelru.LRU[string, *pgconn.StatementDescription]
	closing []string
	next    int // numbers the next statement's name, silo_<next>
	// resetReady is whether the reset's statements are prepared, and
	// resetLast the last one's description; hadTemp is whether the session
	// ever had a temporary schema, which it keeps once it has one.
	resetReady bool
	resetLast  *pgconn.StatementDescription
	hadTemp    bool
	// timeoutMs is the session's statement_timeout, as the API last set
	// it, or 0 when unknown.
	timeoutMs int64
}

func sessionOf(pc *pgconn.PgConn) *session {
	data := pc.CustomData()
	if sess, ok := data[sessionKey].(*session); ok {
		return sess
	}
	sess := &session{}
	sess.stmts, _ = simplelru.NewLRU(maxPrepared, func(_ string, sd *pgconn.StatementDescription) {
		sess.closing = append(sess.closing, sd.Name)
	}) // the size is positive: no error
	data[sessionKey] = sess
	return sess
}

// timeoutFits reports whether the session's statement_timeout suits a call
// that wants want milliseconds: no larger, and within a tenth.
func (sess *session) timeoutFits(want int64) bool {
	have := sess.timeoutMs
	return have > 0 && have <= want && have*10 >= want*9
}

// sentStatement is what send queued for a statement, to read back in order.
type sentStatement struct {
	closes int    // statements closed first
	name   string // of the statement prepared first, or ""
}

// send queues st on p: the closing of evicted statements, then st bound to
// the statement prepared for it before, or prepared now (Parse and
// Describe, then Bind, in the same round trip), or unnamed. A prepared
// statement whose parameter count differs from the call's goes unnamed, so
// that PostgreSQL's error names no statement of ours.
func (sess *session) send(p *pgconn.Pipeline, st statement) sentStatement {
	sent := sentStatement{closes: len(sess.closing)}
	for _, name := range sess.closing {
		p.SendDeallocate(name)
	}
	sess.closing = sess.closing[:0]
	if st.prepare {
		sd, ok := sess.stmts.Get(st.sql)
		switch {
		case ok && len(sd.ParamOIDs) == len(st.params):
			p.SendQueryStatement(sd, st.params, nil, textFormat)
			return sent
		case !ok:
			sent.name = "silo_" + strconv.Itoa(sess.next)
			sess.next++
			p.SendPrepare(sent.name, st.sql, nil)
			p.SendQueryPrepared(sent.name, st.params, nil, textFormat)
			return sent
		}
	}
	p.SendQueryParams(st.sql, st.params, nil, nil, textFormat)
	return sent
}

// The reset. No session state survives from one call to the next on a
// connection, whoever made it: the tenant's SQL or, where no reading of the
// SQL could see it, its functions. At the end of every call, in the call's
// last round trip, a few statements put the session back: RESET ALL (SET
// and set_config), CLOSE ALL (cursors WITH HOLD), DISCARD SEQUENCES
// (currval), DISCARD TEMP once the session has had temporary objects, and
// a SELECT that releases session advisory locks, sets the statement
// timeout for the next call, and reports what costs less to find than to
// clear every time: the tenant's own prepared statements (PREPARE, which no
// command drops without dropping the API's too), LISTEN channels, and a
// first temporary schema. A session that holds any of these, or whose
// reset failed or was skipped, gets cleanupSQL, one more round trip; one
// whose cleanup fails is closed, and the router opens another.
//
// The reset's statements are prepared once per connection, so each costs
// PostgreSQL a Bind and an Execute; they are schema-qualified, as the
// tenant's search_path may put its own objects first. After a query or
// DML statement (see inOneSegment) they run in the same implicit
// transaction, with one Sync for both: a second Sync costs PostgreSQL
// another flush and the API another read (docs/benchmarks.md).
var (
	resetAll       = resetStatement{"silo_reset_all", "RESET ALL"}
	resetCursors   = resetStatement{"silo_reset_cursors", "CLOSE ALL"}
	resetSequences = resetStatement{"silo_reset_sequences", "DISCARD SEQUENCES"}
	resetTemp      = resetStatement{"silo_reset_temp", "DISCARD TEMP"}
	resetLast      = resetStatement{"silo_reset_last", `SELECT pg_catalog.pg_advisory_unlock_all(),
		pg_catalog.set_config('statement_timeout', $1, false),
		EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql),
		EXISTS (SELECT FROM pg_catalog.pg_listening_channels()),
		pg_catalog.pg_my_temp_schema() OPERATOR(pg_catalog.<>) 0`}
	resetStatements = [...]resetStatement{resetAll, resetCursors, resetSequences, resetTemp, resetLast}
)

type resetStatement struct{ name, sql string }

// cleanupSQL is the reset and the deallocation of the tenant's prepared
// statements, in one simple-protocol round trip; %d is the next statement
// timeout and %s a condition on the statements to drop besides the
// tenant's (the reset's own, after the reset failed: the tenant's
// DEALLOCATE ALL or DISCARD ALL may have dropped them).
const cleanupSQL = `RESET ALL; UNLISTEN *; CLOSE ALL; DISCARD TEMP; DISCARD SEQUENCES;
SELECT pg_catalog.pg_advisory_unlock_all(), pg_catalog.set_config('statement_timeout', '%d', false);
DO $$DECLARE r record;
BEGIN
	FOR r IN SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql OR %s LOOP
		EXECUTE pg_catalog.format('DEALLOCATE %%I', r.name);
	END LOOP;
END$$`

// inOneSegment reports whether sql is a query or DML statement, whose
// reset may share its implicit transaction: it cannot commit by itself
// (VACUUM, CREATE INDEX CONCURRENTLY) nor end or open a transaction, so a
// reset that fails (the tenant's function deallocated the API's
// statements) rolls it back, and the call says so.
func inOneSegment(sql string) bool {
	switch leadingWords(sql, 1)[0] {
	case "select", "insert", "update", "delete", "merge", "with", "values", "table", "explain":
		return true
	}
	return false
}

// Statements of the API's own, around the tenant's.
const (
	setTimeoutSQL      = "SELECT pg_catalog.set_config('statement_timeout', $1, false)"
	setLocalTimeoutSQL = "SELECT pg_catalog.set_config('statement_timeout', $1, true)"
)

// call is one data API call on a tenant connection.
type call struct {
	s    *Server
	ctx  context.Context
	conn *pgx.Conn
	sess *session
	b    *budget
	// preparingReset is whether the reset in flight prepares its
	// statements, and resetTemp whether it discards temporary objects.
	preparingReset, resetTemp bool
}

func (s *Server) newCall(ctx context.Context, conn *pgx.Conn) *call {
	return &call{s: s, ctx: ctx, conn: conn, sess: sessionOf(conn.PgConn()),
		b: &budget{maxRows: s.maxRows, maxBytes: s.maxResultBytes}}
}

// query runs st in one round trip: the statement timeout when the
// session's does not suit this call, the statement, and the reset. A
// prepared statement refused before it ran (see isStalePrepared) is run
// again unprepared, so that the answer is the one PostgreSQL gives any
// statement.
func (c *call) query(st statement) (queryResult, error) {
	res, err := c.queryOnce(st)
	if st.prepare && isStalePrepared(err) && !c.conn.IsClosed() {
		c.s.unpreparedReruns.Inc()
		res, err = c.queryOnce(st.unprepared())
	}
	return res, err
}

func (c *call) queryOnce(st statement) (queryResult, error) {
	want := c.s.statementTimeout(c.ctx)
	setTimeout := !c.sess.timeoutFits(want)
	p := c.conn.PgConn().StartPipeline(c.ctx)
	defer p.Close()
	if setTimeout {
		// For the session, not a transaction: a statement such as VACUUM
		// cannot run in one.
		c.sess.timeoutMs = 0
		p.SendQueryParams(setTimeoutSQL, [][]byte{strconv.AppendInt(nil, want, 10)}, nil, nil, nil)
		p.SendPipelineSync()
	}
	sent := c.sess.send(p, st)
	shared := inOneSegment(st.sql)
	if !shared {
		p.SendPipelineSync()
	}
	c.sendReset(p)
	if err := p.Flush(); err != nil {
		return queryResult{}, err
	}
	if setTimeout && endSegment(p) == nil {
		c.sess.timeoutMs = want
	}
	res, err := c.readStatement(p, sent, st)
	if !shared {
		if serr := endSegment(p); err == nil {
			err = serr
		}
	}
	c.forgetStale(err, st)
	// In a shared segment, PostgreSQL skips the reset after a failed
	// statement; and a reset that fails there rolls the statement back.
	resetErr := c.finishReset(p, !shared || err == nil)
	if shared && err == nil && resetErr != nil {
		return queryResult{}, silo.WrapError(resetErr, silo.EINVALID,
			"the statement left its session in a state that could not be reset, so it was rolled back: %s", silo.ErrorMessage(resetErr))
	}
	return res, err
}

// transaction runs stmts in one transaction, a round trip each: the first
// with BEGIN and the transaction's statement timeout, then COMMIT (or
// ROLLBACK) with the reset. current is the statement that failed, or -1.
func (c *call) transaction(stmts []statement) (out transactionResult, current int, err error) {
	out = transactionResult{Results: make([]queryResult, 0, len(stmts))}
	for i, st := range stmts {
		current = i
		var res queryResult
		if res, err = c.txStatement(i, st); err != nil {
			break
		}
		// A statement endsTransaction missed (it reads only the first
		// words) is caught here; what ran before it is committed.
		if c.conn.PgConn().TxStatus() == 'I' {
			err = silo.Errorf(silo.EINVALID, "it ended the transaction: transaction control is not allowed in a transaction call")
			break
		}
		out.Results = append(out.Results, res)
	}
	if err == nil {
		current = -1
	}
	if endErr := c.endTransaction(err == nil); err == nil {
		err = endErr
	}
	return out, current, err
}

func (c *call) txStatement(i int, st statement) (queryResult, error) {
	p := c.conn.PgConn().StartPipeline(c.ctx)
	defer p.Close()
	if i == 0 {
		p.SendQueryParams("BEGIN", nil, nil, nil, nil)
		p.SendQueryParams(setLocalTimeoutSQL, [][]byte{strconv.AppendInt(nil, c.s.statementTimeout(c.ctx), 10)}, nil, nil, nil)
	}
	sent := c.sess.send(p, st)
	p.SendPipelineSync()
	if err := p.Flush(); err != nil {
		return queryResult{}, err
	}
	var err error
	if i == 0 {
		err = readResults(p, 2)
	}
	var res queryResult
	if err == nil {
		res, err = c.readStatement(p, sent, st)
	}
	if serr := endSegment(p); err == nil {
		err = serr
	}
	c.forgetStale(err, st)
	return res, err
}

// endTransaction commits or rolls back the transaction, and resets the
// session, in one round trip. It returns COMMIT's error.
func (c *call) endTransaction(commit bool) error {
	if c.conn.IsClosed() {
		return nil // the transaction ended with its connection
	}
	p := c.conn.PgConn().StartPipeline(c.ctx)
	defer p.Close()
	end := "ROLLBACK"
	if commit {
		end = "COMMIT"
	}
	p.SendQueryParams(end, nil, nil, nil, nil)
	c.sendReset(p) // in a transaction of its own: COMMIT ends the first
	if err := p.Flush(); err != nil {
		return err
	}
	err := readResults(p, 1)
	c.finishReset(p, err == nil)
	return err
}

// readStatement reads what send queued, and the statement's rows within
// the budget; the segment's sync is the caller's to read.
func (c *call) readStatement(p *pgconn.Pipeline, sent sentStatement, st statement) (queryResult, error) {
	if err := readResults(p, sent.closes); err != nil {
		return queryResult{}, err
	}
	if sent.name != "" {
		r, err := p.GetResults()
		if err != nil {
			return queryResult{}, err
		}
		sd, ok := r.(*pgconn.StatementDescription)
		if !ok {
			return queryResult{}, fmt.Errorf("pipeline: a prepare answered with %T", r)
		}
		sd.Name, sd.SQL = sent.name, st.sql
		c.sess.stmts.Add(st.sql, sd)
	}
	r, err := p.GetResults()
	if err != nil {
		return queryResult{}, err
	}
	rr, ok := r.(*pgconn.ResultReader)
	if !ok {
		return queryResult{}, fmt.Errorf("pipeline: a statement answered with %T", r)
	}
	return c.b.read(pgx.RowsFromResultReader(c.conn.TypeMap(), rr))
}

// forgetStale drops st's prepared statement after PostgreSQL refused it
// as stale: it is prepared afresh next time.
func (c *call) forgetStale(err error, st statement) {
	if st.prepare && isStalePrepared(err) && !isBindCount(err) {
		c.sess.stmts.Remove(st.sql)
	}
}

// sendReset queues the reset, and its sync, on p.
func (c *call) sendReset(p *pgconn.Pipeline) {
	c.preparingReset = !c.sess.resetReady
	if c.preparingReset {
		for _, r := range resetStatements {
			p.SendPrepare(r.name, r.sql, nil)
		}
	}
	c.resetTemp = c.sess.hadTemp
	for _, r := range [...]resetStatement{resetAll, resetCursors, resetSequences} {
		p.SendQueryPrepared(r.name, nil, nil, nil)
	}
	if c.resetTemp {
		p.SendQueryPrepared(resetTemp.name, nil, nil, nil)
	}
	timeout := [][]byte{strconv.AppendInt(nil, c.s.sessionTimeout(), 10)}
	if c.sess.resetLast != nil {
		p.SendQueryStatement(c.sess.resetLast, timeout, nil, nil)
	} else {
		p.SendQueryPrepared(resetLast.name, timeout, nil, nil)
	}
	p.SendPipelineSync()
}

// finishReset reads the rest of p, the reset that sendReset queued (unless
// PostgreSQL skipped it: ran is false), and closes p. Then it cleans the
// session up, or closes the connection, as the reset's outcome asks. It
// returns the reset's error.
func (c *call) finishReset(p *pgconn.Pipeline, ran bool) error {
	var dirty bool
	var err error
	if ran {
		dirty, err = c.readReset(p)
	}
	if serr := endSegment(p); err == nil {
		err = serr
	}
	_ = p.Close() // its error, if any, is err
	if c.conn.IsClosed() {
		return err
	}
	c.sess.timeoutMs = 0
	next := c.s.sessionTimeout()
	var cleanupErr error
	switch {
	case err != nil:
		c.sess.resetReady, c.sess.resetLast = false, nil
		_, cleanupErr = c.conn.PgConn().Exec(c.ctx, fmt.Sprintf(cleanupSQL, next, "pg_catalog.starts_with(name, 'silo_reset_')")).ReadAll()
	case !ran:
		// A failed statement's transaction undid its settings, LISTEN and
		// temporary tables, but not its advisory locks, currval or
		// prepared statements: the reset runs on its own.
		p := c.conn.PgConn().StartPipeline(c.ctx)
		c.sendReset(p)
		if cleanupErr = p.Flush(); cleanupErr == nil {
			return c.finishReset(p, true)
		}
	case dirty:
		_, cleanupErr = c.conn.PgConn().Exec(c.ctx, fmt.Sprintf(cleanupSQL, next, "false")).ReadAll()
	}
	if cleanupErr != nil {
		// A session that may hold state is never used again.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), time.Second)
		defer cancel()
		_ = c.conn.Close(ctx)
		return err
	}
	c.sess.timeoutMs = next
	return err
}

// readReset reads the reset's results but its sync. dirty is whether its
// last statement found state to clean up.
func (c *call) readReset(p *pgconn.Pipeline) (dirty bool, err error) {
	var sds []*pgconn.StatementDescription
	if c.preparingReset {
		for range resetStatements {
			r, err := p.GetResults()
			if err != nil {
				return false, err
			}
			sd, ok := r.(*pgconn.StatementDescription)
			if !ok {
				return false, fmt.Errorf("pipeline: a prepare answered with %T", r)
			}
			sds = append(sds, sd)
		}
	}
	n := 4
	if c.resetTemp {
		n = 5
	}
	for i := range n {
		r, err := p.GetResults()
		if err != nil {
			return false, err
		}
		rr, ok := r.(*pgconn.ResultReader)
		if !ok {
			return false, fmt.Errorf("pipeline: the reset answered with %T", r)
		}
		if i == n-1 && rr.NextRow() {
			v := rr.Values()
			preparedOrListening := string(v[2]) == "t" || string(v[3]) == "t"
			temp := string(v[4]) == "t"
			dirty = preparedOrListening || temp && !c.resetTemp
			c.sess.hadTemp = c.sess.hadTemp || temp
		}
		if _, err := rr.Close(); err != nil {
			return false, err
		}
	}
	if c.preparingReset {
		last := sds[len(sds)-1]
		last.Name, last.SQL = resetLast.name, resetLast.sql
		c.sess.resetReady, c.sess.resetLast = true, last
	}
	return dirty, nil
}

// readResults reads n results of p, closing any rows; it stops at the
// first error.
func readResults(p *pgconn.Pipeline, n int) error {
	for range n {
		r, err := p.GetResults()
		if err != nil {
			return err
		}
		if rr, ok := r.(*pgconn.ResultReader); ok {
			if _, err := rr.Close(); err != nil {
				return err
			}
		}
	}
	return nil
}

// endSegment reads p's results up to and with the next sync. After an
// error PostgreSQL skips the segment's other messages, and so does pgconn.
// It returns the first error, PostgreSQL's or one that closed the
// connection.
func endSegment(p *pgconn.Pipeline) error {
	var first error
	for {
		r, err := p.GetResults()
		if err != nil {
			if first == nil {
				first = err
			}
			if _, ok := errors.AsType[*pgconn.PgError](err); ok {
				continue
			}
			return first
		}
		switch r := r.(type) {
		case *pgconn.PipelineSync:
			return first
		case *pgconn.ResultReader:
			if _, err := r.Close(); err != nil && first == nil {
				first = err
			}
		case nil:
			if first == nil {
				first = errors.New("pipeline: no sync where one was sent")
			}
			return first
		}
	}
}

// RunQuery runs one statement on the tenant's database.
func (s *Server) RunQuery(c echo.Context, id TenantID) error {
	ctx, cancel, err := s.dataContext(c, id)
	if err != nil {
		return err
	}
	defer cancel()
	var body statementBody
	if err := decodeJSON(c, &body); err != nil {
		return err
	}
	st, err := parseStatement(body)
	if err != nil {
		return err
	}
	st.prepare = s.prepares(id, st.sql)
	var res queryResult
	err = s.router.WithTenant(ctx, id, func(conn *pgx.Conn) error {
		var err error
		res, err = s.newCall(ctx, conn).query(st)
		return err
	})
	if err != nil {
		return s.dataError(ctx, err, id, -1)
	}
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, append(res.appendJSON(nil), '\n'))
}

// RunTransaction runs statements in one transaction on the tenant's
// database.
func (s *Server) RunTransaction(c echo.Context, id TenantID) error {
	ctx, cancel, err := s.dataContext(c, id)
	if err != nil {
		return err
	}
	defer cancel()
	var body transactionBody
	if err := decodeJSON(c, &body); err != nil {
		return err
	}
	if n := len(body.Statements); n < 1 || n > MaxStatements {
		return silo.Errorf(silo.EINVALID, "statements must hold 1 to %d statements, not %d", MaxStatements, n)
	}
	stmts := make([]statement, len(body.Statements))
	for i, sb := range body.Statements {
		st, err := parseStatement(sb)
		if err == nil && endsTransaction(sb.SQL) {
			err = silo.Errorf(silo.EINVALID, "it would end the transaction, which commits or rolls back by itself")
		}
		if err != nil {
			code := silo.ErrorCode(err)
			return &statementError{err: silo.WrapError(err, code, "statements[%d]: %s", i, silo.ErrorMessage(err)), index: &i}
		}
		st.prepare = s.prepares(id, st.sql)
		stmts[i] = st
	}
	out, current, err := s.runTransaction(ctx, id, stmts)
	if isStalePrepared(err) {
		// A prepared statement was refused before it ran, and the
		// transaction rolled back: run it all again, unprepared.
		for i := range stmts {
			stmts[i] = stmts[i].unprepared()
		}
		s.unpreparedReruns.Inc()
		out, current, err = s.runTransaction(ctx, id, stmts)
	}
	if err != nil {
		return s.dataError(ctx, err, id, current)
	}
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, append(out.appendJSON(nil), '\n'))
}

// runTransaction runs stmts in one transaction. current is the statement
// that failed, or -1.
func (s *Server) runTransaction(ctx context.Context, id string, stmts []statement) (out transactionResult, current int, err error) {
	current = -1
	err = s.router.WithTenant(ctx, id, func(conn *pgx.Conn) error {
		var err error
		out, current, err = s.newCall(ctx, conn).transaction(stmts)
		return err
	})
	return out, current, err
}

// endsTransaction reports whether sql starts with a command that ends the
// transaction it runs in: COMMIT, END, ABORT, ROLLBACK but ROLLBACK TO a
// savepoint, and PREPARE TRANSACTION.
func endsTransaction(sql string) bool {
	w := leadingWords(sql, 3)
	switch w[0] {
	case "commit", "end", "abort":
		return true
	case "rollback":
		// ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name stays in it.
		return !(w[1] == "to" || (w[1] == "work" || w[1] == "transaction") && w[2] == "to")
	case "prepare":
		return w[1] == "transaction"
	}
	return false
}

// leadingWords returns the first n words of sql, lowercased, past
// whitespace and comments; missing words are "".
func leadingWords(sql string, n int) []string {
	words := make([]string, n)
	s := sql
	for i := range n {
		for {
			t := strings.TrimLeft(s, " \t\r\n\f\v")
			switch {
			case strings.HasPrefix(t, "--"):
				if end := strings.IndexByte(t, '\n'); end >= 0 {
					s = t[end+1:]
				} else {
					s = ""
				}
				continue
			case strings.HasPrefix(t, "/*"):
				s = skipBlockComment(t)
				continue
			}
			s = t
			break
		}
		end := strings.IndexFunc(s, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '_')
		})
		if end < 0 {
			end = len(s)
		}
		if end == 0 {
			return words // a symbol: no more words
		}
		words[i], s = strings.ToLower(s[:end]), s[end:]
	}
	return words
}

// skipBlockComment returns s past the block comment it starts with;
// PostgreSQL's block comments nest.
func skipBlockComment(s string) string {
	depth := 0
	for i := 0; i+1 < len(s); i++ {
		switch s[i : i+2] {
		case "/*":
			depth++
			i++
		case "*/":
			depth--
			i++
			if depth == 0 {
				return s[i+1:]
			}
		}
	}
	return ""
}

// budget counts what a response holds against the data API's limits, all
// statements together.
type budget struct {
	rows, bytes       int
	maxRows, maxBytes int
}

// read reads a statement's rows while the budget lasts. The rows past it
// are read and dropped, undecoded, so the statement completes and
// RowsAffected counts them all; a row whose text alone shows that it
// cannot fit is not decoded either. No message is larger than the router's
// cap (router.Config.MaxMessageBytes), so no row costs more than that.
func (b *budget) read(rows pgx.Rows) (queryResult, error) {
	res := queryResult{Columns: []string{}, Rows: []json.RawMessage{}}
	defer rows.Close()
	fields := rows.FieldDescriptions()
	for _, f := range fields {
		res.Columns = append(res.Columns, f.Name)
	}
	row := make([]any, len(fields))
	for rows.Next() {
		raw := rows.RawValues()
		if b.rows >= b.maxRows || b.bytes+minJSONSize(fields, raw) > b.maxBytes {
			res.Truncated = true
			break
		}
		values, err := rows.Values()
		if err != nil {
			return res, err
		}
		for i, v := range values {
			row[i] = jsonValue(fields[i].DataTypeOID, v, raw[i])
		}
		enc, err := json.Marshal(row)
		if err != nil {
			return res, fmt.Errorf("encode a row: %w", err)
		}
		if b.bytes+len(enc) > b.maxBytes {
			res.Truncated = true
			break
		}
		b.rows++
		b.bytes += len(enc)
		res.Rows = append(res.Rows, enc)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return res, err
	}
	res.RowsAffected = rows.CommandTag().RowsAffected()
	return res, nil
}

// minJSONSize is no more than the length of a row's JSON, read from its
// values' text: a value's JSON is at least half as long as its text
// (bytea's base64 against its hex), but for json and jsonb, whose JSON
// drops the text's spaces.
func minJSONSize(fields []pgconn.FieldDescription, raw [][]byte) int {
	n := 0
	for i, v := range raw {
		switch fields[i].DataTypeOID {
		case pgtype.JSONOID, pgtype.JSONBOID, pgtype.JSONArrayOID, pgtype.JSONBArrayOID:
		default:
			n += len(v) / 2
		}
	}
	return n
}

// isStalePrepared reports whether err is PostgreSQL refusing a statement
// the API prepared, before it ran: DDL changed the columns it returns, the
// tenant's SQL deallocated it (DEALLOCATE ALL, DISCARD ALL) or took its
// name, or the call's parameters do not match it (isBindCount).
func isStalePrepared(err error) bool {
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	if !ok {
		return false
	}
	switch pgErr.Code {
	case "0A000": // feature_not_supported
		return strings.Contains(pgErr.Message, "cached plan must not change result type")
	case "26000", "42P05": // invalid_sql_statement_name, duplicate_prepared_statement
		return strings.Contains(pgErr.Message, `"silo_`)
	}
	return isBindCount(err)
}

// isBindCount reports whether err is PostgreSQL refusing the parameters
// of a statement the API prepared, for their number.
func isBindCount(err error) bool {
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	return ok && pgErr.Code == "08P01" && strings.Contains(pgErr.Message, `prepared statement "silo_`)
}

// timestampLayout is RFC 3339 without a zone, for timestamps that have none.
const timestampLayout = "2006-01-02T15:04:05.999999999"

// jsonValue turns a value pgx decoded into one JSON encodes faithfully.
// json and jsonb stay the JSON they are; values JSON has no type for, or
// that pgx decodes into types that lose something (numeric, "char"), are
// PostgreSQL's own text for them, which the results' text format gives as
// raw.
func jsonValue(oid uint32, v any, raw []byte) any {
	if v == nil {
		return nil
	}
	layout := time.RFC3339Nano
	switch oid {
	case pgtype.JSONOID, pgtype.JSONBOID:
		return json.RawMessage(bytes.Clone(raw))
	case pgtype.NumericOID, pgtype.QCharOID:
		return string(raw)
	case pgtype.DateOID, pgtype.DateArrayOID:
		layout = time.DateOnly
	case pgtype.TimestampOID, pgtype.TimestampArrayOID:
		layout = timestampLayout
	}
	if out, ok := convert(v, layout); ok {
		return out
	}
	return string(raw)
}

// convert turns a decoded value into a JSON-friendly one; ok is false for
// a type it does not know, and then the caller falls back to text.
func convert(v any, layout string) (any, bool) {
	switch v := v.(type) {
	case nil, bool, string, int16, int32, int64, uint32, uint64, map[string]any:
		return v, true
	case float32:
		return float(float64(v), v), true
	case float64:
		return float(v, v), true
	case []byte:
		return base64.StdEncoding.EncodeToString(v), true
	case time.Time:
		if layout == time.RFC3339Nano {
			v = v.UTC()
		}
		return v.Format(layout), true
	case pgtype.Numeric:
		if s, err := v.Value(); err == nil {
			return s, true
		}
	case netip.Prefix:
		return v.String(), true
	case netip.Addr:
		return v.String(), true
	case net.HardwareAddr:
		return v.String(), true
	case [16]byte: // uuid
		return fmt.Sprintf("%x-%x-%x-%x-%x", v[0:4], v[4:6], v[6:8], v[8:10], v[10:16]), true
	case []any: // arrays, and arrays in json values
		out := make([]any, len(v))
		for i, e := range v {
			c, ok := convert(e, layout)
			if !ok {
				return nil, false
			}
			out[i] = c
		}
		return out, true
	}
	return nil, false
}

// float returns f as JSON can hold it: NaN and the infinities as
// PostgreSQL spells them.
func float(f float64, v any) any {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	return v
}

// dataError turns the failure of a data call into its problem. index is
// the failed statement of a transaction, or -1.
func (s *Server) dataError(ctx context.Context, err error, tenant string, index int) error {
	var at *int
	prefix := ""
	if index >= 0 {
		at, prefix = &index, fmt.Sprintf("statements[%d]: ", index)
	}
	// The router's errors come first: a connection it could not open may
	// wrap PostgreSQL's reason (a FATAL), which is no fault of the SQL.
	_, isSilo := errors.AsType[*silo.Error](err)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && !isSilo {
		trimPgError(pgErr)
		code, msg := silo.EINVALID, pgErr.Message
		switch class := pgErr.Code[:min(2, len(pgErr.Code))]; {
		case pgErr.Code == "57014" && strings.Contains(msg, "statement timeout"):
			code, msg = silo.ETIMEOUT, fmt.Sprintf("the statement did not finish within the query timeout of %s, and PostgreSQL cancelled it", s.queryTimeout)
		case pgErr.Code == "40001" || pgErr.Code == "40P01": // serialization failure, deadlock: retry
			code = silo.ECONFLICT
		case class == "53" || class == "57" || class == "58": // resources, shutdown, system errors
			code = silo.EUNAVAILABLE
		}
		return &statementError{err: silo.WrapError(err, code, "%s%s", prefix, msg), index: at, pg: pgErr}
	}
	var code, msg string
	var retryAfter time.Duration
	tooLarge, isTooLarge := errors.AsType[*pgproto3.ExceededMaxBodyLenErr](err)
	switch se, ok := errors.AsType[*silo.Error](err); {
	case ok:
		code, msg, retryAfter = se.Code, se.Message, se.RetryAfter // the router's, or ours
	case isTooLarge:
		// The connection is gone before the call's end: a transaction never
		// commits, but a lone statement's Sync was sent with it, and a
		// statement that had done its work (INSERT … RETURNING) commits.
		outcome := "the transaction was rolled back"
		if at == nil {
			outcome = "a statement that changes data may still have completed"
		}
		code, msg = silo.ETOOLARGE, fmt.Sprintf("PostgreSQL sent a message of %d bytes (a row, an error or a notice), "+
			"over the data API's limit of %d bytes: the connection was closed, and %s",
			tooLarge.ActualBodyLen, tooLarge.MaxExpectedBodyLen, outcome)
	case errors.Is(err, router.ErrCopyRefused):
		code, msg = silo.ErrorCode(errCopy), silo.ErrorMessage(errCopy)
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		code, msg = silo.ETIMEOUT, fmt.Sprintf("the call did not finish within the query timeout of %s", s.queryTimeout)
	case errors.Is(err, context.Canceled):
		code, msg = silo.EUNAVAILABLE, "the request was cancelled"
	case isConnectionError(err):
		code, msg = silo.EUNAVAILABLE, fmt.Sprintf("the connection to the database of tenant %q failed", tenant)
	default:
		code, msg = silo.EINTERNAL, "internal error"
	}
	if at == nil {
		return &silo.Error{Code: code, Message: msg, Err: err, RetryAfter: retryAfter}
	}
	return &statementError{err: &silo.Error{Code: code, Message: prefix + msg, Err: err, RetryAfter: retryAfter}, index: at}
}

// maxErrorText bounds each text field of a PostgreSQL error that a data
// call reports or logs: a tenant's RAISE can make one as long as the
// router's message cap.
const maxErrorText = 4 << 10

// trimPgError cuts e's texts down to maxErrorText bytes, at a character.
func trimPgError(e *pgconn.PgError) {
	for _, f := range []*string{&e.Message, &e.Detail, &e.Hint, &e.Where, &e.InternalQuery} {
		if len(*f) > maxErrorText {
			cut := maxErrorText
			for cut > 0 && !utf8.RuneStart((*f)[cut]) {
				cut--
			}
			*f = fmt.Sprintf("%s… (%d bytes)", (*f)[:cut], len(*f))
		}
	}
}

func isConnectionError(err error) bool {
	if _, ok := errors.AsType[net.Error](err); ok {
		return true
	}
	return pgconn.SafeToRetry(err) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}
