package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
	"github.com/silo-db/silo/tracing"
)

// Defaults of Config.
const (
	DefaultShardBudget    = 20
	DefaultTenantMaxConns = 4
	DefaultAcquireTimeout = 5 * time.Second
	DefaultIdleTimeout    = time.Minute
	DefaultMaxTenantPools = 10000
	DefaultRouteCacheSize = 100000
	// A shard that stops answering is found within DefaultProbeInterval +
	// 2 × DefaultProbeTimeout: 5 s.
	DefaultProbeInterval = time.Second
	DefaultProbeTimeout  = 2 * time.Second
)

// Config configures a Router.
type Config struct {
	// Catalog is the catalog database; the router listens on it for tenant
	// changes.
	Catalog *pgxpool.Pool
	Store   *shardmap.Store
	// Dialer builds the tenants' connection settings. Default: one over
	// Store and SecretKey.
	Dialer *shardmap.Dialer
	// SecretKey opens the tenants' sealed passwords when Dialer is nil: a
	// key ring, the current key then previous ones.
	SecretKey []byte
	// ShardBudget is the most connections this router opens to one shard,
	// all tenants together.
	ShardBudget int
	// TenantMaxConns is the most connections one tenant may hold, so a hot
	// tenant cannot take a shard's whole budget.
	TenantMaxConns int
	// AcquireTimeout bounds the wait for a connection when the caller's
	// context has no earlier deadline.
	AcquireTimeout time.Duration
	// IdleTimeout closes connections unused for this long.
	IdleTimeout time.Duration
	// MaxTenantPools bounds the tenants with open pools; the least recently
	// used pool is closed past it.
	MaxTenantPools int
	// RouteCacheSize bounds the cached routes.
	RouteCacheSize int
	// ConnectTimeout bounds each new connection to a shard.
	ConnectTimeout time.Duration
	// ProbeInterval is how often each shard in use is checked (SELECT 1,
	// bounded by ProbeTimeout). Two failures in a row open the shard's
	// breaker: the requests in flight on the shard are cut off (their
	// connections closed) and fail with EUNAVAILABLE and a retry hint, and
	// its tenants' new requests fail at once the same way, until a probe or
	// a trial request succeeds. So a shard that hangs (accepts TCP but
	// never answers) or goes down is found, and the requests it holds are
	// let go, within the detection time, ProbeInterval + 2 × ProbeTimeout:
	// 5 s by default. Default DefaultProbeInterval, at least 100ms.
	ProbeInterval time.Duration
	// ProbeTimeout bounds each probe, its connection included. Default
	// DefaultProbeTimeout, at least 100ms.
	ProbeTimeout time.Duration
	// CatalogHealth says whether the catalog answers. While it does not,
	// tenants whose routes are cached are served as usual, and the others
	// get EUNAVAILABLE at once; a route being read when the catalog goes
	// down fails the same way within the time CatalogHealth takes to notice.
	// Default: one of the router's own over Catalog, started and stopped
	// with the router.
	CatalogHealth *shardmap.CatalogHealth
	// MoveHold is how long a request for a tenant in the cutover of a move
	// (state moving) is held, waiting for the tenant's new route, before it
	// fails with EUNAVAILABLE and a retry hint. Default 5s.
	MoveHold time.Duration
	// MaxHeld bounds the requests held at once for moving tenants; more
	// fail at once with EUNAVAILABLE. Default 10,000.
	MaxHeld int
	// BreakerCooldown is how long an open breaker refuses requests before it
	// lets one through to try the shard.
	BreakerCooldown time.Duration
	// MaxMessageBytes caps each protocol message a tenant connection reads
	// (a row, an error, a notice): a query that gets a larger one fails with
	// *pgproto3.ExceededMaxBodyLenErr before it is read, and its connection
	// is closed. Tenant connections also refuse COPY on extended-protocol
	// queries (ErrCopyRefused) and drop notifications; see limits.go.
	// Default DefaultMaxMessageBytes, at least MinMaxMessageBytes.
	MaxMessageBytes int
	Logger          *slog.Logger
	// Registry gets the router's metrics; nil registers none.
	Registry prometheus.Registerer
	// TracerProvider gets a span for each wait for a connection
	// ("router.acquire") and one for the time the connection is lent
	// ("router.query"), children of the caller's span. They name the
	// tenant and the shard, never the SQL. Nil makes no spans.
	TracerProvider trace.TracerProvider
}

func (c Config) withDefaults() Config {
	if c.ShardBudget == 0 {
		c.ShardBudget = DefaultShardBudget
	}
	if c.TenantMaxConns == 0 {
		c.TenantMaxConns = DefaultTenantMaxConns
	}
	if c.AcquireTimeout == 0 {
		c.AcquireTimeout = DefaultAcquireTimeout
	}
	if c.MoveHold == 0 {
		c.MoveHold = 5 * time.Second
	}
	if c.MaxHeld == 0 {
		c.MaxHeld = 10000
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxTenantPools == 0 {
		c.MaxTenantPools = DefaultMaxTenantPools
	}
	if c.RouteCacheSize == 0 {
		c.RouteCacheSize = DefaultRouteCacheSize
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 2 * time.Second
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	if c.BreakerCooldown == 0 {
		c.BreakerCooldown = 3 * time.Second
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Catalog == nil || c.Store == nil:
		return errors.New("router: Config.Catalog and Config.Store are required")
	case c.ShardBudget < 1 || c.TenantMaxConns < 1:
		return errors.New("router: the shard budget and the tenant cap must be at least 1")
	case c.AcquireTimeout < 0 || c.IdleTimeout < time.Second || c.ConnectTimeout < 0 || c.BreakerCooldown < 0:
		return errors.New("router: timeouts must be positive, the idle timeout at least 1s")
	case c.ProbeInterval < 100*time.Millisecond || c.ProbeTimeout < 100*time.Millisecond:
		return errors.New("router: the probe interval and timeout must be at least 100ms")
	case c.MaxMessageBytes < MinMaxMessageBytes:
		return fmt.Errorf("router: the message cap must be at least %d bytes", MinMaxMessageBytes)
	}
	return nil
}

// Router runs work on a tenant's own database, as the tenant's own role,
// within a fixed connection budget per shard. Create it with New and Start
// it; it is safe for concurrent use.
type Router struct {
	cfg       Config
	log       *slog.Logger
	resolver  *resolver
	metrics   *metrics
	tracer    trace.Tracer
	health    *shardmap.CatalogHealth
	ownHealth bool // started and stopped with the router

	mu      sync.Mutex
	shards  map[string]*shardPool
	tenants *lru.Cache[string, *tenantPool]
	held    atomic.Int64 // requests held for moving tenants

	stop chan struct{}
	wg   sync.WaitGroup
}

// New returns a Router. It returns an error for an invalid Config.
func New(cfg Config) (*Router, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Dialer == nil {
		sealer, err := shardmap.NewSealer(cfg.SecretKey)
		if err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
		if cfg.Dialer, err = shardmap.NewDialer(shardmap.DialerConfig{Store: cfg.Store, Sealer: sealer,
			ConnectTimeout: cfg.ConnectTimeout, Logger: cfg.Logger}); err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
	}
	r := &Router{cfg: cfg, log: cfg.Logger, metrics: newMetrics(), shards: map[string]*shardPool{}, stop: make(chan struct{}),
		tracer: tracing.Tracer(cfg.TracerProvider, "github.com/silo-db/silo/router")}
	r.health = cfg.CatalogHealth
	if r.health == nil {
		var err error
		if r.health, err = shardmap.NewCatalogHealth(shardmap.CatalogHealthConfig{Pool: cfg.Catalog, Logger: cfg.Logger}); err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
		r.ownHealth = true
	}
	var err error
	if r.resolver, err = newResolver(cfg.Dialer, cfg.Store, r.health, cfg.RouteCacheSize, r.metrics); err != nil {
		return nil, err
	}
	r.resolver.limits = connLimits{maxMessageBytes: cfg.MaxMessageBytes}
	// golang-lru calls this in the goroutine of Add: closing a pool never
	// blocks, so the request path is not held up.
	r.tenants, err = lru.NewWithEvict(cfg.MaxTenantPools, func(_ string, tp *tenantPool) { tp.close() })
	if err != nil {
		return nil, err
	}
	if cfg.Registry != nil {
		if err := r.metrics.register(cfg.Registry, r); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Start listens for tenant changes and starts closing idle connections (and
// watching the catalog, unless Config.CatalogHealth is shared). It returns
// once the listener is connected, or ctx's error.
func (r *Router) Start(ctx context.Context) error {
	if r.ownHealth {
		if err := r.health.Start(ctx); err != nil {
			return err
		}
	}
	ready := make(chan error, 1)
	r.wg.Add(2)
	go func() { defer r.wg.Done(); r.listen(ready) }()
	go func() { defer r.wg.Done(); r.reapLoop() }()
	select {
	case err := <-ready:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop stops the background loops and closes every connection.
func (r *Router) Stop() {
	select {
	case <-r.stop:
		return
	default:
	}
	close(r.stop)
	r.wg.Wait()
	if r.ownHealth {
		r.health.Stop()
	}
	r.tenants.Purge() // closes every tenant pool
	r.mu.Lock()
	for _, s := range r.shards {
		s.mu.Lock()
		s.closed = true
		s.signal()
		s.mu.Unlock()
	}
	r.mu.Unlock()
}

// WithTenant runs fn with a connection to the tenant's database, as the
// tenant's role. The connection returns to the pool when fn returns; fn must
// not keep it, and a transaction it leaves open is discarded with the
// connection. WithTenant returns ENOTFOUND for unknown, deleted and purged
// tenants, ESUSPENDED for suspended ones, EUNAVAILABLE for one still being
// created, when no connection comes free in time (the wait is bounded by
// ctx and Config.AcquireTimeout), when the tenant's shard is unavailable,
// and when the catalog is down and the tenant's route is not cached, or
// fn's error. ctx also bounds fn's queries. When the shard's breaker opens
// while fn runs (see Config.ProbeInterval), the connection is closed under
// fn, so its queries fail at once, and WithTenant returns EUNAVAILABLE with
// a retry hint whatever fn returned, unless fn returned nil.
func (r *Router) WithTenant(ctx context.Context, tenantID string, fn func(conn *pgx.Conn) error) error {
	return r.withTenant(ctx, tenantID, fn)
}

// withTenant runs fn on a lent connection, reset first if a borrower of
// the wire-protocol endpoint left parameters set on its session.
func (r *Router) withTenant(ctx context.Context, tenantID string, fn func(conn *pgx.Conn) error) error {
	l, err := r.Acquire(ctx, tenantID)
	if err != nil {
		return err
	}
	conn := l.Conn()
	if len(SessionParams(conn)) > 0 {
		if _, err := conn.Exec(ctx, "RESET ALL"); err != nil {
			return l.Release(err)
		}
		SetSessionParams(conn, nil)
	}
	return l.Release(fn(conn))
}

// acquire gets a connection of tenant pool tp within wait when ctx has no
// earlier deadline.
func (r *Router) acquire(ctx context.Context, tp *tenantPool, wait time.Duration) (*pgx.Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
	}
	conn, waited, err := tp.acquire(ctx, r.dial(tp))
	r.metrics.observeWait(tp.shard.name, waited)
	return conn, err
}

// cutCause returns the breaker's error when lctx, a lease's context made
// from ctx, was cut off, and nil otherwise.
func cutCause(ctx, lctx context.Context) error {
	if lctx.Err() == nil || ctx.Err() != nil {
		return nil
	}
	return context.Cause(lctx)
}

// WithTenantTx runs fn in a transaction on the tenant's database, committed
// when fn returns nil and rolled back otherwise. Errors as WithTenant.
func (r *Router) WithTenantTx(ctx context.Context, tenantID string, fn func(tx pgx.Tx) error) error {
	return r.WithTenant(ctx, tenantID, func(conn *pgx.Conn) error {
		return pgx.BeginFunc(ctx, conn, fn)
	})
}

// dial opens a connection of tenant pool tp's tenant, feeding its shard's
// breaker: a shard that refuses or ignores connections counts as failing;
// one that answers, even with an error, as up. Only a connection attempt
// that timed out is tried again (a busy shard): a refused password, a role
// that may not log in or a shard out of connection slots is answered at
// once, never retried in a loop. A refused password is first repaired
// (the tenant may have changed its role's password) and tried once more.
func (r *Router) dial(tp *tenantPool) func(context.Context, *pgx.ConnConfig) (*pgx.Conn, error) {
	s := tp.shard
	return func(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
		if err := r.cfg.Dialer.LoginBlocked(tp.route.TenantID); err != nil {
			return nil, err
		}
		repaired := false
		for {
			dctx, cancel := context.WithTimeout(ctx, r.cfg.ConnectTimeout)
			conn, err := connectGuarded(dctx, cfg)
			cancel()
			switch {
			case err == nil:
				s.breaker.success()
			case ctx.Err() != nil:
				// The caller's deadline, or the lease cut off: nothing is
				// learned of the shard.
			case shardmap.IsAuthFailure(err) && !repaired:
				s.breaker.success() // the shard answered
				repaired = true
				r.metrics.loginRepairs.Inc()
				t := &silo.Tenant{ID: tp.route.TenantID, Shard: tp.route.Shard, Database: tp.route.Database}
				if rerr := r.cfg.Dialer.RepairLogin(ctx, t, ""); rerr != nil {
					r.log.WarnContext(ctx, "router: a tenant's login was refused and could not be repaired", "tenant", t.ID, "err", rerr)
					return nil, err
				}
				continue
			case isConnFailure(err):
				if s.breaker.failure() {
					r.log.WarnContext(ctx, "router: shard unavailable; refusing its tenants' requests", "shard", s.name, "err", err)
				}
			case isTimeout(err) && !s.breaker.isOpen():
				// Timed out, with time left and the shard not known to be
				// down: a busy shard, so try again within the deadline.
				continue
			case isTimeout(err):
				// The trial request of an open breaker: the shard still
				// does not answer.
				s.breaker.failure()
			default:
				s.breaker.success() // the shard answered, with an error
			}
			return conn, err
		}
	}
}

// isTimeout tells a connection attempt that ran out of time.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		return true
	}
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// isConnFailure tells a shard that cannot be reached (refused, reset) from
// one that answered with an error. A connection that timed out does not
// count: on a busy machine a fork storm of new sessions can outlast the
// timeout while the shard is fine, and a hung shard is the prober's to find.
func isConnFailure(err error) bool {
	if _, ok := errors.AsType[*pgconn.PgError](err); ok {
		return false
	}
	return !isTimeout(err)
}

// hold waits while a tenant is in the cutover of a move, for its route to
// change (the catalog's NOTIFY invalidates the cached one), up to MoveHold.
// The tenant's connections to its old shard are closed as they come back.
func (r *Router) hold(ctx context.Context, id string) (*Route, error) {
	if r.held.Add(1) > int64(r.cfg.MaxHeld) {
		r.held.Add(-1)
		return nil, &silo.Error{Code: silo.EUNAVAILABLE, RetryAfter: time.Second,
			Message: fmt.Sprintf("tenant %q is being moved; too many requests are waiting for it", id)}
	}
	defer r.held.Add(-1)
	r.mu.Lock()
	if tp, ok := r.tenants.Get(id); ok {
		tp.close()
		r.tenants.Remove(id)
	}
	r.mu.Unlock()
	deadline := time.Now().Add(r.cfg.MoveHold)
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		rt, err := r.resolver.resolve(ctx, id)
		if err != nil {
			return nil, err
		}
		if rt.State != silo.TenantMoving {
			return rt, nil
		}
		if time.Now().After(deadline) {
			return nil, &silo.Error{Code: silo.EUNAVAILABLE, RetryAfter: time.Second,
				Message: fmt.Sprintf("tenant %q is being moved to another shard; try again in a moment", id)}
		}
	}
}

// pool returns the tenant's pool, resolving its route and refusing tenants
// that are not active.
func (r *Router) pool(ctx context.Context, id string) (*tenantPool, error) {
	rt, err := r.resolver.resolve(ctx, id)
	if err != nil {
		return nil, err
	}
	if rt.State == silo.TenantMoving {
		if rt, err = r.hold(ctx, id); err != nil {
			return nil, err
		}
	}
	switch rt.State {
	case silo.TenantActive:
	case silo.TenantSuspended:
		return nil, silo.Errorf(silo.ESUSPENDED, "tenant %q is suspended", id)
	case silo.TenantProvisioning:
		return nil, silo.Errorf(silo.EUNAVAILABLE, "tenant %q is still being created", id)
	default: // deleted, purged: gone as far as its users know
		return nil, silo.Errorf(silo.ENOTFOUND, "tenant %q not found", id)
	}
	if tp, ok := r.tenants.Get(id); ok && tp.route == rt {
		return tp, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if tp, ok := r.tenants.Get(id); ok {
		if tp.route == rt {
			return tp, nil
		}
		tp.close() // an older route: its connections may go to the wrong place
	}
	s, ok := r.shards[rt.Shard]
	if !ok {
		s = newShardPool(rt.Shard, r.cfg.ShardBudget, &breaker{threshold: 2, cooldown: r.cfg.BreakerCooldown})
		s.okQueries = r.metrics.queries.WithLabelValues(rt.Shard, "ok")
		r.shards[rt.Shard] = s
		select {
		case <-r.stop:
		default:
			r.wg.Add(1)
			go r.probe(s)
		}
	}
	tp := &tenantPool{route: rt, shard: s, max: min(r.cfg.TenantMaxConns, r.cfg.ShardBudget)}
	r.tenants.Add(id, tp)
	return tp, nil
}

// invalidate drops a tenant's route and closes its pool ("" for all).
func (r *Router) invalidate(id string) {
	r.resolver.invalidate(id)
	if id == "" {
		for _, tp := range r.tenants.Values() {
			tp.close()
		}
		return
	}
	if tp, ok := r.tenants.Peek(id); ok {
		tp.close()
	}
}

// connectError names what failed: the budget, or the shard.
func (r *Router) connectError(err error, tp *tenantPool) error {
	if _, ok := errors.AsType[*silo.Error](err); ok {
		return err
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "53300" {
		if strings.Contains(pgErr.Message, "for role") {
			return &silo.Error{Code: silo.EUNAVAILABLE, Err: err, RetryAfter: time.Second,
				Message: fmt.Sprintf("tenant %q has as many connections as its connection limit allows; retry shortly", tp.route.TenantID)}
		}
		return &silo.Error{Code: silo.EUNAVAILABLE, Err: err, RetryAfter: time.Second,
			Message: fmt.Sprintf("shard %q has no connection slot free; retry shortly", tp.shard.name)}
	}
	return silo.WrapError(err, silo.EUNAVAILABLE, "cannot connect to the database of tenant %q on shard %q", tp.route.TenantID, tp.shard.name)
}

func (r *Router) reapLoop() {
	t := time.NewTicker(max(time.Second, r.cfg.IdleTimeout/4))
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.mu.Lock()
			shards := make([]*shardPool, 0, len(r.shards))
			for _, s := range r.shards {
				shards = append(shards, s)
			}
			r.mu.Unlock()
			for _, s := range shards {
				s.reap(r.cfg.IdleTimeout)
			}
		}
	}
}
