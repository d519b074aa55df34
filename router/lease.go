package router

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/tracing"
)

// Lease is a connection to a tenant's database, as the tenant's role, lent
// by Acquire until Release or Discard. It is for callers that speak the
// protocol themselves (the wire-protocol endpoint); WithTenant is the
// simpler way. A Lease is not safe for concurrent use, but Release,
// Discard and Cut may be called while another goroutine uses Conn.
type Lease struct {
	r      *Router
	tp     *tenantPool
	l      *lease
	ctx    context.Context // the caller's
	lctx   context.Context // ends when the shard's breaker cuts the lease off
	cancel context.CancelCauseFunc
	conn   *pgx.Conn
	start  time.Time
	done   bool
	span   trace.Span // router.query: from Acquire to Release or Discard
}

// Acquire lends a connection of the tenant's, within the shard's budget
// and the tenant's cap. Errors as WithTenant's: ENOTFOUND, ESUSPENDED,
// EUNAVAILABLE (the budget, the shard, the catalog, a move that takes
// longer than Config.MoveHold). ctx bounds the wait and stays the lease's:
// when it ends, so does the lease's Context. The caller must Release or
// Discard the lease.
func (r *Router) Acquire(ctx context.Context, tenantID string) (*Lease, error) {
	return r.AcquireWithin(ctx, tenantID, r.cfg.AcquireTimeout)
}

// AcquireWithin is Acquire with its own bound on the wait for a connection
// within the budgets, in the place of Config.AcquireTimeout, for a ctx
// without a deadline: the wire-protocol endpoint's clients queue longer
// than a library call, as PgBouncer's do (query_wait_timeout), and ctx
// stays the lease's, which a deadline would cut short.
func (r *Router) AcquireWithin(ctx context.Context, tenantID string, wait time.Duration) (*Lease, error) {
	// The span is a sibling of the lease's, not its parent: the lease
	// keeps ctx, and router.query outlives the wait.
	_, span := r.tracer.Start(ctx, "router.acquire", trace.WithAttributes(tracing.TenantID.String(tenantID)))
	for attempt := 0; ; attempt++ {
		l, err := r.acquireLease(ctx, tenantID, wait, attempt == 3)
		if errors.Is(err, errPoolClosed) {
			continue // the route changed under us: resolve it again
		}
		if err != nil {
			endSpan(span, err)
			return nil, err
		}
		shard := tracing.Shard.String(l.tp.shard.name)
		span.SetAttributes(shard)
		span.End()
		_, l.span = r.tracer.Start(ctx, "router.query", trace.WithAttributes(
			tracing.TenantID.String(tenantID), shard, semconv.DBSystemNamePostgreSQL))
		return l, nil
	}
}

// endSpan ends a span of the router's with err's codes: Silo's, and the
// SQLSTATE of an error the server sent. Never its message, which may
// quote the tenant's data.
func endSpan(span trace.Span, err error) {
	if err != nil {
		code := silo.ErrorCode(err)
		attrs := []attribute.KeyValue{tracing.ErrorCode.String(code)}
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
			attrs = append(attrs, semconv.DBResponseStatusCode(pgErr.Code))
			code = pgErr.Code
		}
		span.SetAttributes(attrs...)
		span.SetStatus(codes.Error, code)
	}
	span.End()
}

// acquireLease is one attempt of Acquire. It returns errPoolClosed when
// the tenant's pool closed before a connection came, unless last is set.
func (r *Router) acquireLease(ctx context.Context, tenantID string, wait time.Duration, last bool) (*Lease, error) {
	tp, err := r.pool(ctx, tenantID)
	if err != nil {
		return nil, err
	}
	s := tp.shard
	if err := s.breaker.allow(s.name); err != nil {
		r.metrics.observeQuery(s, 0, err)
		return nil, err
	}
	// The lease's context ends when the shard's breaker opens: a wait for
	// a connection, or a dial, ends with it.
	lctx, cancel := context.WithCancelCause(ctx)
	l := &lease{cancel: cancel}
	// A tenant with an idle connection (the common case of a busy one)
	// gets it at once; the rest wait or dial under a timer.
	conn := tp.takeIdle(l)
	if conn != nil && ended(conn) {
		// The server ended it while it sat idle (see ended): it is closed,
		// and the slow path finds another.
		s.end(l)
		tp.discard(conn)
		conn = nil
	}
	if conn == nil {
		s.begin(l)
		conn, err = r.acquire(lctx, tp, wait)
		if err == nil && !s.attach(l, conn) {
			tp.discard(conn)
			conn, err = nil, context.Cause(lctx)
		}
	}
	if err != nil {
		s.end(l)
		// Read before cancel: after it, lctx has ended (with
		// context.Canceled) whatever happened, and every error (a pool
		// closed under a move, a budget that stayed full, a refused
		// login) would be taken for a lease cut off.
		cause := cutCause(ctx, lctx)
		cancel(nil)
		if cause != nil {
			return nil, cause
		}
		if errors.Is(err, errPoolClosed) && !last {
			return nil, err
		}
		return nil, r.connectError(err, tp)
	}
	return &Lease{r: r, tp: tp, l: l, ctx: ctx, lctx: lctx, cancel: cancel, conn: conn, start: time.Now()}, nil
}

// Conn is the lent connection. Its session may hold what an earlier
// borrower left (see SessionParams).
func (l *Lease) Conn() *pgx.Conn { return l.conn }

// Shard names the shard the connection is on.
func (l *Lease) Shard() string { return l.tp.shard.name }

// Route is the tenant's route the connection follows.
func (l *Lease) Route() *Route { return l.tp.route }

// Context ends when the caller's context does, or when the shard's breaker
// cuts the lease off (its cause then says so, as an EUNAVAILABLE error);
// the connection's socket is closed at the same moment.
func (l *Lease) Context() context.Context { return l.lctx }

// CutOff returns the breaker's error when the lease was cut off, and nil
// otherwise.
func (l *Lease) CutOff() error { return cutCause(l.ctx, l.lctx) }

// Relay tells the connection that its borrower speaks the protocol itself:
// the guard that refuses COPY on extended-protocol queries (which pgx
// cannot run, see ErrCopyRefused) lets them through until Release.
func (l *Lease) Relay() {
	if g, ok := l.conn.PgConn().CustomData()[guardKey].(*copyGuard); ok {
		g.relay.Store(true)
	}
}

// Release returns the connection to the pool, and reports to the shard's
// breaker how the shard behaved: err is the outcome of the work (nil for
// success). A connection closed, left inside a transaction, or cut off is
// closed rather than pooled. Release returns err, or the breaker's error
// when the lease was cut off and err is not nil.
func (l *Lease) Release(err error) error {
	if l.done {
		return err
	}
	l.done = true
	defer l.cancel(nil)
	defer func() { endSpan(l.span, err) }()
	r, tp, s := l.r, l.tp, l.tp.shard
	l.unrelay()
	if s.end(l.l) {
		// Cut off by the breaker: the socket is closed, whether or not the
		// borrower noticed, so the connection never goes back to the pool.
		tp.discard(l.conn)
		if err != nil {
			err = context.Cause(l.lctx)
		}
		r.metrics.observeQuery(s, time.Since(l.start), err)
		return err
	}
	r.metrics.observeQuery(s, time.Since(l.start), err)
	// Every request tells the breaker how the shard behaved, so a trial
	// request on a reused connection closes it too. A connection closed on
	// purpose (by the borrower, or by the limits on what it reads) says
	// nothing of the shard: else one tenant's oversized rows would shut out
	// every tenant of the shard. Nor does one the server ended with an
	// error of its own (a FATAL): the shard answered. A move's cutover
	// ends a tenant's sessions (57P01), and its borrowers' errors opened
	// the breaker of the whole shard for its cooldown; a shard that is
	// shutting down says the same, and its prober and dials find it down.
	if l.conn.IsClosed() && l.ctx.Err() == nil && err != nil && !closedByLimits(err) && !serverAnswered(err) {
		s.breaker.failure()
	} else if !l.conn.IsClosed() {
		s.breaker.success()
	}
	tp.release(l.conn)
	return err
}

// Discard closes the connection instead of pooling it (its session holds
// what the next borrower must not find), and frees its slot once it is
// gone. The shard's breaker is told nothing.
func (l *Lease) Discard() {
	if l.done {
		return
	}
	l.done = true
	defer l.cancel(nil)
	defer endSpan(l.span, nil)
	l.tp.shard.end(l.l)
	l.r.metrics.observeQuery(l.tp.shard, time.Since(l.start), nil)
	l.tp.discard(l.conn)
}

// serverAnswered reports whether err is an error the server sent.
func serverAnswered(err error) bool {
	_, ok := errors.AsType[*pgconn.PgError](err)
	return ok
}

func (l *Lease) unrelay() {
	if g, ok := l.conn.PgConn().CustomData()[guardKey].(*copyGuard); ok {
		g.relay.Store(false)
	}
}

// sessionKey holds, in a connection's CustomData, the parameters a
// borrower set on its session (see SessionParams).
const sessionKey = "silo.session"

// SessionParams returns the run-time parameters a borrower left set on the
// connection's session, as recorded with SetSessionParams: none on a
// connection that only WithTenant used. The map is the connection's; copy
// it before changing it.
func SessionParams(conn *pgx.Conn) map[string]string {
	m, _ := conn.PgConn().CustomData()[sessionKey].(map[string]string)
	return m
}

// SetSessionParams records the run-time parameters set on the connection's
// session. WithTenant resets a session that has any (RESET ALL) before fn
// sees it.
func SetSessionParams(conn *pgx.Conn, params map[string]string) {
	if len(params) == 0 {
		delete(conn.PgConn().CustomData(), sessionKey)
		return
	}
	conn.PgConn().CustomData()[sessionKey] = params
}
