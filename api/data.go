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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/silo-db/silo"
)

// Router runs work on a tenant's own database, as the tenant's own role;
// *router.Router implements it. Its errors are ENOTFOUND for unknown,
// deleted and purged tenants, ESUSPENDED, EUNAVAILABLE when no connection
// comes in time, or fn's error.
type Router interface {
	WithTenant(ctx context.Context, tenantID string, fn func(*pgx.Conn) error) error
	WithTenantTx(ctx context.Context, tenantID string, fn func(pgx.Tx) error) error
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

// statement is a statement ready to send: SQL and its parameters as text.
type statement struct {
	sql string
	// args are the options of pgx's Query, then the parameters: args[0] is
	// the QueryExecMode (see Server.execMode), args[1] asks for every result
	// column as text, which jsonValue reads.
	args []any
}

// The leading arguments of statement.args.
var textResults = pgx.QueryResultFormats{pgx.TextFormatCode}

// unprepared returns st to be sent unnamed.
func (st statement) unprepared() statement {
	st.args = slices.Clone(st.args)
	st.args[0] = pgx.QueryExecModeExec
	return st
}

// Prepared statements: a tenant's statement of up to preparedMaxSQL bytes
// is prepared once it is seen again among the last seenStatements
// statements of all tenants (see Server.execMode).
const (
	preparedMaxSQL = 8 << 10
	seenStatements = 1 << 16
)

// execMode chooses how a tenant's statement is sent. The first time,
// unnamed (pgx.QueryExecModeExec): the parameters go as text with no type,
// PostgreSQL infers each one's type from the statement, and nothing is kept
// on the server, as suits SQL that may be anything and may run once. A
// statement the tenant sent before, among the recent ones, is prepared on
// each connection that runs it and kept in that connection's statement
// cache (pgx's, an LRU of 512): PostgreSQL then skips parsing and planning
// it, most of its work for a point select. Its parameters still go as text
// and PostgreSQL still infers their types, from the same Parse, so the two
// answer alike. As with JDBC's prepareThreshold, SQL that carries its values
// as literals, new text each time, never fills the cache nor pays a
// Prepare's round trip.
func (s *Server) execMode(tenant, sql string) pgx.QueryExecMode {
	if len(sql) > preparedMaxSQL {
		s.unnamed.Inc()
		return pgx.QueryExecModeExec
	}
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString(tenant)
	h.WriteByte(0)
	h.WriteString(sql)
	k := h.Sum64()
	if _, ok := s.seen.Get(k); ok {
		s.prepared.Inc()
		return pgx.QueryExecModeCacheStatement
	}
	s.seen.Add(k, struct{}{})
	s.unnamed.Inc()
	return pgx.QueryExecModeExec
}

func parseStatement(b statementBody) (statement, error) {
	if strings.TrimSpace(b.SQL) == "" {
		return statement{}, silo.Errorf(silo.EINVALID, "sql is empty: send one SQL statement")
	}
	st := statement{sql: b.SQL, args: make([]any, 0, len(b.Params)+2)}
	st.args = append(st.args, pgx.QueryExecModeExec, textResults)
	for i, raw := range b.Params {
		v, err := paramOf(raw)
		if err != nil {
			return statement{}, silo.Errorf(silo.EMALFORMED, "params[%d] is not valid JSON: %v", i, err)
		}
		st.args = append(st.args, v)
	}
	return st, nil
}

// paramOf turns a JSON value into a text parameter: a string's text, a
// number's literal, true or false, NULL for null, and the JSON text of an
// array or object.
func paramOf(raw json.RawMessage) (any, error) {
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
		return s, err
	case '{', '[':
		var buf bytes.Buffer
		err := json.Compact(&buf, raw)
		return buf.String(), err
	}
	return string(raw), nil // true, false, or a number's literal
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
func (s *Server) statementTimeout(ctx context.Context) string {
	left := s.queryTimeout
	if deadline, ok := ctx.Deadline(); ok {
		left = time.Until(deadline)
	}
	left -= min(s.queryTimeout/10, time.Second)
	return strconv.FormatInt(max(1, left.Milliseconds()), 10)
}

// timeoutKey is the key, in each connection's pgconn CustomData, of the
// statement_timeout the API last set on it, in milliseconds (int64), so
// /query skips a round trip when it would set about the same again. The
// data lives and dies with the connection, and a connection serves one
// call at a time.
const timeoutKey = "silo.statementTimeoutMs"

// forgetTimeout drops what is remembered of conn's statement_timeout,
// after SQL that may have changed it.
func forgetTimeout(conn *pgx.Conn) { delete(conn.PgConn().CustomData(), timeoutKey) }

// changesSettings reports whether sql is a command that may change the
// session's settings, statement_timeout among them: SET, RESET, DISCARD.
// (A function such as set_config is not caught; ctx's deadline still
// bounds what it lets run.)
func changesSettings(sql string) bool {
	switch leadingWords(sql, 1)[0] {
	case "set", "reset", "discard":
		return true
	}
	return false
}

// setStatementTimeout sets the session's statement_timeout to what is left
// of ctx (see statementTimeout), unless the value already set is no larger
// and within a tenth of it. After a SET, RESET or DISCARD it is set again;
// SQL that changed the setting some other way is still bounded by ctx's
// deadline, the backstop.
func (s *Server) setStatementTimeout(ctx context.Context, conn *pgx.Conn) error {
	want := s.statementTimeout(ctx)
	ms, _ := strconv.ParseInt(want, 10, 64)
	data := conn.PgConn().CustomData()
	if have, ok := data[timeoutKey].(int64); ok && have <= ms && have*10 >= ms*9 {
		return nil
	}
	delete(data, timeoutKey)
	// Unnamed, as the transaction's: a tenant's DISCARD ALL or DEALLOCATE
	// ALL would leave a cached statement stale.
	if _, err := conn.Exec(ctx, "SELECT set_config('statement_timeout', $1, false)", pgx.QueryExecModeExec, want); err != nil {
		return err
	}
	data[timeoutKey] = ms
	return nil
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
	st.args[0] = s.execMode(id, st.sql)
	b := s.newBudget()
	var res queryResult
	err = s.router.WithTenant(ctx, id, func(conn *pgx.Conn) error {
		// For the session, not a transaction: a statement such as VACUUM
		// cannot run in one.
		if err := s.setStatementTimeout(ctx, conn); err != nil {
			return err
		}
		var err error
		res, err = b.run(ctx, conn, conn, st)
		if changesSettings(st.sql) {
			forgetTimeout(conn)
		}
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
		st.args[0] = s.execMode(id, st.sql)
		stmts[i] = st
	}
	out, current, err := s.runTransaction(ctx, id, stmts)
	if isStalePrepared(err) {
		// A prepared statement went stale after it was cached, and the
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
	b := s.newBudget()
	out = transactionResult{Results: make([]queryResult, 0, len(stmts))}
	current = -1
	err = s.router.WithTenantTx(ctx, id, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('statement_timeout', $1, true)", pgx.QueryExecModeExec, s.statementTimeout(ctx)); err != nil {
			return err
		}
		for i, st := range stmts {
			current = i
			if changesSettings(st.sql) {
				// A SET without LOCAL outlives the transaction.
				forgetTimeout(tx.Conn())
			}
			res, err := b.run(ctx, tx, tx.Conn(), st)
			if err != nil {
				return err
			}
			// A statement endsTransaction missed (it reads only the first
			// words) is caught here; what ran before it is committed.
			if tx.Conn().PgConn().TxStatus() == 'I' {
				return silo.Errorf(silo.EINVALID, "it ended the transaction: transaction control is not allowed in a transaction call")
			}
			out.Results = append(out.Results, res)
		}
		current = -1
		return nil
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
	reruns            prometheus.Counter // see Server.unpreparedReruns
}

func (s *Server) newBudget() *budget {
	return &budget{maxRows: s.maxRows, maxBytes: s.maxResultBytes, reruns: s.unpreparedReruns}
}

type queryer interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// run runs one statement on conn, through q (conn, or a transaction on
// it), and reads its rows while the budget lasts. The rows past it are read
// and dropped, so the statement completes and RowsAffected counts them all.
//
// A prepared statement that fails before it runs is run once more
// unprepared, so that the answer is the one PostgreSQL gives any statement:
// its cached plan went stale (see isStalePrepared), or pgx refused its
// arguments before sending them (their count: PostgreSQL's own error says
// it better). Not in a failed transaction, which the caller retries whole.
func (b *budget) run(ctx context.Context, q queryer, conn *pgx.Conn, st statement) (queryResult, error) {
	res, sent, err := b.runOnce(ctx, q, st)
	if err == nil || st.args[0] != pgx.QueryExecModeCacheStatement || conn.IsClosed() || conn.PgConn().TxStatus() == 'E' {
		return res, err
	}
	if _, isPg := errors.AsType[*pgconn.PgError](err); isStalePrepared(err) || !sent && !isPg {
		b.reruns.Inc()
		res, _, err = b.runOnce(ctx, q, st.unprepared())
	}
	return res, err
}

// runOnce runs st; sent is false when Query failed, before any row.
func (b *budget) runOnce(ctx context.Context, q queryer, st statement) (res queryResult, sent bool, err error) {
	res = queryResult{Columns: []string{}, Rows: []json.RawMessage{}}
	rows, err := q.Query(ctx, st.sql, st.args...)
	if err != nil {
		return res, false, err
	}
	defer rows.Close()
	fields := rows.FieldDescriptions()
	for _, f := range fields {
		res.Columns = append(res.Columns, f.Name)
	}
	row := make([]any, len(fields))
	for rows.Next() {
		if b.rows >= b.maxRows {
			res.Truncated = true
			break
		}
		values, err := rows.Values()
		if err != nil {
			return res, true, err
		}
		raw := rows.RawValues()
		for i, v := range values {
			row[i] = jsonValue(fields[i].DataTypeOID, v, raw[i])
		}
		enc, err := json.Marshal(row)
		if err != nil {
			return res, true, fmt.Errorf("encode a row: %w", err)
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
		return res, true, err
	}
	res.RowsAffected = rows.CommandTag().RowsAffected()
	return res, true, nil
}

// isStalePrepared reports whether err is PostgreSQL refusing one of pgx's
// cached prepared statements before running it: DDL changed the columns
// it returns, or the session's statements were deallocated (DISCARD ALL,
// DEALLOCATE ALL in a tenant's SQL). pgx drops the statement from its cache
// on the error, so it is prepared afresh next time.
func isStalePrepared(err error) bool {
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	if !ok {
		return false
	}
	switch pgErr.Code {
	case "0A000": // feature_not_supported
		return strings.Contains(pgErr.Message, "cached plan must not change result type")
	case "26000": // invalid_sql_statement_name
		return strings.Contains(pgErr.Message, `"stmtcache_`)
	}
	return false
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
	switch se, ok := errors.AsType[*silo.Error](err); {
	case ok:
		code, msg = se.Code, se.Message // the router's, or ours
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
		return silo.WrapError(err, code, "%s", msg)
	}
	return &statementError{err: silo.WrapError(err, code, "%s%s", prefix, msg), index: at}
}

func isConnectionError(err error) bool {
	if _, ok := errors.AsType[net.Error](err); ok {
		return true
	}
	return pgconn.SafeToRetry(err) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}
