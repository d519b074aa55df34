package router

import (
	"container/list"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/silo-db/silo"
)

// PostgreSQL binds a connection to one database and one role, so each
// tenant needs connections of its own. A shardPool keeps the connections of
// all its tenants under one budget: when the budget is spent, an idle
// connection of another tenant is closed to make room, and when none is
// idle, the caller waits (up to its deadline) for one to come back.
type shardPool struct {
	name    string
	budget  int
	breaker *breaker
	// okQueries is the shard's silo_query_duration_seconds{outcome="ok"},
	// looked up once rather than on every request.
	okQueries prometheus.Observer

	mu       sync.Mutex
	open     int        // connections open or being opened, all tenants
	idle     *list.List // of *idleConn, most recently used first
	changed  chan struct{}
	waiters  int // on changed; may count some gone since (a spurious signal)
	closed   bool
	inFlight map[*lease]struct{}
}

// lease is one request on the shard, from its wait for a connection to its
// end. When the shard's breaker opens, every lease is cut off: its context
// is cancelled with the breaker's error as the cause, which ends a wait or
// a dial, and its connection's socket is closed, which ends whatever fn is
// reading or writing at once. A query's own context could not do this: pgx
// answers it with a cancel request, which a hung postmaster never takes.
type lease struct {
	cancel context.CancelCauseFunc
	nc     net.Conn // the connection's socket, once it has one
	cut    bool
}

// tenantPool is one tenant's share of a shard's connections.
type tenantPool struct {
	route  *Route
	shard  *shardPool
	max    int // per-tenant cap: one hot tenant cannot take the whole budget
	open   int // guarded by shard.mu, as is everything below
	idle   []*idleConn
	closed bool
}

type idleConn struct {
	conn  *pgx.Conn
	owner *tenantPool
	elem  *list.Element // in shard.idle
	since time.Time
}

func newShardPool(name string, budget int, b *breaker) *shardPool {
	return &shardPool{name: name, budget: budget, breaker: b, idle: list.New(), changed: make(chan struct{}),
		inFlight: map[*lease]struct{}{}}
}

// begin records a request on the shard.
func (s *shardPool) begin(l *lease) {
	s.mu.Lock()
	s.inFlight[l] = struct{}{}
	s.mu.Unlock()
}

// takeIdle lends the tenant's most recently used idle connection, if it
// has one that is open, and records the lease on the shard with it, as
// begin and attach do, in one critical section. It returns nil otherwise:
// the caller then waits or dials through acquire (under a timer, which the
// lease of an idle connection does without).
func (tp *tenantPool) takeIdle(l *lease) *pgx.Conn {
	s := tp.shard
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(tp.idle)
	if tp.closed || s.closed || n == 0 || tp.idle[n-1].conn.IsClosed() {
		return nil // a closed one is acquire's to discard
	}
	ic := tp.idle[n-1]
	tp.idle = tp.idle[:n-1]
	s.idle.Remove(ic.elem)
	l.nc = ic.conn.PgConn().Conn()
	s.inFlight[l] = struct{}{}
	return ic.conn
}

// attach records the connection a lease got. It returns false when the
// lease was cut off meanwhile: the connection must not be used.
func (s *shardPool) attach(l *lease, conn *pgx.Conn) bool {
	nc := conn.PgConn().Conn()
	s.mu.Lock()
	defer s.mu.Unlock()
	l.nc = nc
	return !l.cut
}

// end forgets a lease and reports whether it was cut off.
func (s *shardPool) end(l *lease) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.inFlight, l)
	return l.cut
}

// cutInFlight cuts off every request on the shard with err as its cause. It
// never blocks on the network.
func (s *shardPool) cutInFlight(err error) {
	var cancels []context.CancelCauseFunc
	var socks []net.Conn
	s.mu.Lock()
	for l := range s.inFlight {
		if !l.cut {
			l.cut = true
			cancels = append(cancels, l.cancel)
			if l.nc != nil {
				socks = append(socks, l.nc)
			}
		}
	}
	s.mu.Unlock()
	for _, cancel := range cancels {
		cancel(err)
	}
	for _, nc := range socks {
		// The deadline first: it frees a write blocked on a full socket
		// buffer, which a TLS connection's Close would wait for.
		_ = nc.SetDeadline(time.Unix(1, 0))
		_ = nc.Close()
	}
}

// signal wakes every waiter; the caller holds mu. Without one it does
// nothing: a connection returned to a pool nobody waits on, the common
// case, costs no channel.
func (s *shardPool) signal() {
	if s.waiters == 0 {
		return
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.waiters = 0
}

// errPoolClosed means the tenant's pool was closed (its route changed or it
// was evicted) while a caller was using it: resolve the route again.
var errPoolClosed = errors.New("tenant pool closed")

// acquire returns a connection for the tenant: an idle one of its own, a new
// one within the budgets, or a new one in the place of another tenant's idle
// connection. It waits for a connection to come back until ctx is done. It
// reports how long it waited.
func (tp *tenantPool) acquire(ctx context.Context, dial func(context.Context, *pgx.ConnConfig) (*pgx.Conn, error)) (*pgx.Conn, time.Duration, error) {
	s := tp.shard
	var waited time.Duration
	for {
		s.mu.Lock()
		if tp.closed || s.closed {
			s.mu.Unlock()
			return nil, waited, errPoolClosed
		}
		if n := len(tp.idle); n > 0 {
			ic := tp.idle[n-1]
			tp.idle = tp.idle[:n-1]
			s.idle.Remove(ic.elem)
			s.mu.Unlock()
			if ic.conn.IsClosed() || ended(ic.conn) { // the server ended it while idle
				tp.discard(ic.conn)
				continue
			}
			return ic.conn, waited, nil
		}
		var victim *idleConn
		canOpen := tp.open < tp.max
		if canOpen && s.open >= s.budget {
			if back := s.idle.Back(); back != nil {
				// The least recently used idle connection of the shard gives
				// its slot to this tenant.
				victim = back.Value.(*idleConn)
				s.idle.Remove(back)
				victim.owner.removeIdle(victim)
				victim.owner.open--
				s.open--
			}
		}
		if canOpen && s.open < s.budget {
			tp.open++
			s.open++
			s.mu.Unlock()
			if victim != nil {
				// Gone before the new connection opens, so the shard never
				// holds more than the budget.
				hangUp(ctx, victim.conn)
			}
			conn, err := dial(ctx, tp.route.connConfig)
			if err != nil {
				tp.discard(nil)
				return nil, waited, err
			}
			return conn, waited, nil
		}
		changed := s.changed
		s.waiters++
		s.mu.Unlock()
		start := time.Now()
		select {
		case <-changed:
			waited += time.Since(start)
		case <-ctx.Done():
			waited += time.Since(start)
			return nil, waited, silo.WrapError(ctx.Err(), silo.EUNAVAILABLE,
				"no connection to shard %q came free in time: its budget of %d connections is in use", s.name, s.budget)
		}
	}
}

// maxUnasked bounds the messages ended reads from an idle connection.
const maxUnasked = 100

// ended reports whether the server ended conn while it sat idle in the
// pool (its backend terminated, by a move's cutover or an admin; the shard
// restarted; idle_session_timeout): the FATAL, or the end of the stream, is
// then already on the socket. It looks without waiting, no round trip: a
// statement sent to a session that is gone fails with nothing run, and its
// borrower cannot tell that from a statement cut off while it ran. What an
// idle session may be sent unasked (a notice, a parameter's new value, a
// notification) is read as pgx reads it, and the connection stays.
func ended(conn *pgx.Conn) bool {
	pg := conn.PgConn()
	nc := pg.Conn()
	if !unread(nc) {
		return false // the common case: no deadline set, none to clear
	}
	defer func() { _ = nc.SetReadDeadline(time.Time{}) }()
	for i := range maxUnasked {
		if i > 0 && !unread(nc) {
			return false
		}
		// Something is there: a whole message, or the stream's end.
		if err := nc.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			return true
		}
		if _, err := pg.ReceiveMessage(context.Background()); err != nil {
			return true
		}
	}
	return true
}

// unread reports whether nc's socket has bytes to read or has reached its
// end, without reading or waiting (a read with a deadline that has passed
// never looks at the socket). A socket it cannot look at counts as unread.
// Bytes pgx's background reader took already are not seen, but the end of
// the stream that follows a FATAL is.
func unread(nc net.Conn) bool {
	if tc, ok := nc.(interface{ NetConn() net.Conn }); ok {
		nc = tc.NetConn() // TLS: its records are bytes on the socket too
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	// Control, not Read: pgx's background reader may be parked in a read
	// of this socket (it stops only once that read returns), and Read would
	// wait for it. A peek takes nothing from it.
	var buf [1]byte
	var rerr error
	err = rc.Control(func(fd uintptr) {
		_, _, rerr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	})
	return err != nil || !errors.Is(rerr, syscall.EAGAIN)
}

// release returns a connection. A connection that is broken, left inside a
// transaction, or whose pool closed meanwhile is closed instead.
func (tp *tenantPool) release(conn *pgx.Conn) {
	s := tp.shard
	reusable := !conn.IsClosed() && conn.PgConn().TxStatus() == 'I'
	s.mu.Lock()
	if !reusable || tp.closed || s.closed {
		s.mu.Unlock()
		tp.discard(conn)
		return
	}
	ic := &idleConn{conn: conn, owner: tp, since: time.Now()}
	ic.elem = s.idle.PushFront(ic)
	tp.idle = append(tp.idle, ic)
	s.signal()
	s.mu.Unlock()
}

// discard closes conn (if any) and then gives up its slot: a slot is free
// only once its connection is gone.
func (tp *tenantPool) discard(conn *pgx.Conn) {
	if conn != nil {
		hangUp(context.Background(), conn)
	}
	tp.shard.free(map[*tenantPool]int{tp: 1})
}

// hangUpWait bounds how long hangUp waits for a backend to go.
const hangUpWait = 2 * time.Second

// terminate is the protocol's Terminate message.
var terminate = []byte{'X', 0, 0, 0, 4}

// hangUp closes conn and waits until its backend is gone from the shard, up
// to hangUpWait or ctx's deadline. pgx's Close sends Terminate and closes
// the socket at once, and the backend then exits in its own time: a slot
// freed there and reused at once by a new connection would put the shard
// over its budget for a moment (pg_stat_activity showed 22 of 20 under
// churn), and near max_connections that is a refused connection. A backend
// leaves the proc array before it closes its socket, so hangUp waits for
// the end of the stream. A connection that is already closed (the server
// ended it, or a query's deadline did) is left as it is.
func hangUp(ctx context.Context, conn *pgx.Conn) {
	hc, err := conn.PgConn().Hijack()
	if err != nil {
		conn.Close(context.Background())
		return
	}
	nc := hc.Conn
	defer nc.Close()
	deadline := time.Now().Add(hangUpWait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = nc.SetDeadline(deadline)
	if _, err := nc.Write(terminate); err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, nc) // until the server closes its end
}

// free gives up slots whose connections are closed, per owner.
func (s *shardPool) free(slots map[*tenantPool]int) {
	s.mu.Lock()
	for tp, n := range slots {
		tp.open -= n
		s.open -= n
	}
	s.signal()
	s.mu.Unlock()
}

// closeAndFree closes connections taken out of the idle lists and then
// frees their slots.
func (s *shardPool) closeAndFree(conns []*idleConn) {
	slots := map[*tenantPool]int{}
	for _, ic := range conns {
		hangUp(context.Background(), ic.conn)
		slots[ic.owner]++
	}
	if len(slots) > 0 {
		s.free(slots)
	}
}

func (tp *tenantPool) removeIdle(ic *idleConn) {
	for i, c := range tp.idle {
		if c == ic {
			tp.idle = append(tp.idle[:i], tp.idle[i+1:]...)
			return
		}
	}
}

// close closes the tenant's idle connections (in the background, freeing
// their slots once closed) and the others as they come back. It never
// blocks on the network.
func (tp *tenantPool) close() {
	s := tp.shard
	s.mu.Lock()
	if tp.closed {
		s.mu.Unlock()
		return
	}
	tp.closed = true
	idle := tp.idle
	tp.idle = nil
	for _, ic := range idle {
		s.idle.Remove(ic.elem)
	}
	s.mu.Unlock()
	go s.closeAndFree(idle)
}

// reap closes connections idle for longer than maxIdle.
func (s *shardPool) reap(maxIdle time.Duration) {
	cutoff := time.Now().Add(-maxIdle)
	var old []*idleConn
	s.mu.Lock()
	for e := s.idle.Back(); e != nil; {
		ic := e.Value.(*idleConn)
		if ic.since.After(cutoff) {
			break // the list is ordered by last use
		}
		prev := e.Prev()
		s.idle.Remove(e)
		ic.owner.removeIdle(ic)
		old = append(old, ic)
		e = prev
	}
	s.mu.Unlock()
	s.closeAndFree(old)
}

// stats returns the shard's open and idle connection counts.
func (s *shardPool) stats() (open, idle int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open, s.idle.Len()
}
