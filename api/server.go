package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// Catalog is what the API needs of the tenant directory.
type Catalog interface {
	Ping(ctx context.Context) error
	CreateShard(ctx context.Context, sh silo.Shard) (*silo.Shard, error)
	GetShard(ctx context.Context, name string) (*silo.Shard, error)
	ListShards(ctx context.Context, p silo.Page) (silo.List[silo.Shard], error)
	SetShardState(ctx context.Context, name string, state silo.ShardState) (*silo.Shard, error)
	DeleteShard(ctx context.Context, name string) error
	GetTenant(ctx context.Context, id string) (*silo.Tenant, error)
	ListTenants(ctx context.Context, f shardmap.TenantFilter, p silo.Page) (silo.List[silo.Tenant], error)
	ListAudit(ctx context.Context, f shardmap.AuditFilter, p silo.Page) (silo.List[silo.AuditEntry], error)
	ListOperations(ctx context.Context, f shardmap.OperationFilter, p silo.Page) (silo.List[silo.Operation], error)
	CreateTenantKey(ctx context.Context, tenantID, name string) (*shardmap.TenantKey, string, error)
	ListTenantKeys(ctx context.Context, tenantID string, p silo.Page) (silo.List[shardmap.TenantKey], error)
	RevokeTenantKey(ctx context.Context, tenantID, keyID string) error
	AuthenticateKey(ctx context.Context, token string) (*shardmap.TenantKey, error)
}

// CatalogHealth says whether the catalog answers: shardmap.CatalogHealth.
type CatalogHealth interface {
	// Err returns EUNAVAILABLE while the catalog is down, else nil.
	Err() error
	// Guard returns Err's error, or a context that also ends when the
	// catalog goes down (shardmap.GuardCause tells).
	Guard(ctx context.Context) (context.Context, context.CancelFunc, error)
}

// Defaults of Config.
const (
	DefaultBodyLimit      = 1 << 20 // 1 MiB
	MaxBodyLimit          = 10 << 20
	DefaultRequestTimeout = 30 * time.Second
	// The data API's limits.
	DefaultQueryTimeout   = 30 * time.Second
	DefaultMaxRows        = 10000
	DefaultMaxResultBytes = 10 << 20 // 10 MiB
	// DefaultKeyCacheTTL is how long a key the catalog accepted is
	// accepted again without asking it, and MaxKeyCacheTTL the most
	// Config.KeyCacheTTL may be: the time a revoked key may still work.
	DefaultKeyCacheTTL = 30 * time.Second
	MaxKeyCacheTTL     = 10 * time.Minute
)

// Registry is where the server's metrics are registered and gathered
// from for /metrics: a *prometheus.Registry, or one that wraps it.
type Registry interface {
	prometheus.Registerer
	prometheus.Gatherer
}

// Config configures a Server.
type Config struct {
	Catalog     Catalog
	Provisioner Provisioner // required
	AdminToken  string      // required; compared in constant time
	Logger      *slog.Logger
	// Registry receives the API's metrics and the Go runtime's, and is
	// served at /metrics. Default: a new prometheus.Registry.
	Registry Registry
	// MetricsToken, when set, is the bearer token /metrics asks for
	// (compared in constant time); at least 16 characters. Unset, /metrics
	// is open to anyone who can reach the server.
	MetricsToken string
	// BodyLimit caps request bodies, in bytes: 1 MiB by default, 10 MiB at
	// most.
	BodyLimit int64
	// RequestTimeout bounds each request's work, database calls included,
	// but for the export and the data API, which have deadlines of their
	// own.
	RequestTimeout time.Duration

	// Router runs the data API's SQL on tenants' databases. Without it, the
	// data endpoints answer 503 EUNAVAILABLE.
	Router Router
	// CatalogHealth, when set, makes the API fail fast while the catalog is
	// down: control-plane requests answer 503 EUNAVAILABLE with Retry-After
	// at once, and those in flight when it goes down end so (but an export
	// that streams), within the time CatalogHealth takes to notice. The
	// data API goes on serving the tenants whose keys and routes are
	// cached. Without it, each request waits for the catalog up to its own
	// timeout.
	CatalogHealth CatalogHealth
	// KeyCacheTTL is how long a tenant key the catalog accepted is
	// accepted again without asking it: a key revoked through another
	// server stops working here within this time (through this server, at
	// once), and during a catalog outage a key is served for this long
	// after its last check. Default DefaultKeyCacheTTL, at most
	// MaxKeyCacheTTL.
	KeyCacheTTL time.Duration
	// PgEndpoint is the address clients reach the wire-protocol endpoint
	// at (host:port), for the connection strings of POST
	// /v1/tenants/{id}/connect; empty when the server has none, and that
	// call answers 409. PgTLS says whether the endpoint offers TLS.
	PgEndpoint string
	PgTLS      bool
	// Migrations runs tenant schema migrations across the fleet. Without
	// it, the /v1/migrations endpoints answer 503 EUNAVAILABLE.
	Migrations Migrations
	// Rebalancer moves tenants and plans moves. Without it, moves and
	// /v1/rebalance answer 503.
	Rebalancer Rebalancer
	// Checker compares the catalog with the shards. Without it, /v1/check
	// answers 503.
	Checker Checker
	// Console, when set, is served at /console and under it, without a
	// token: console.Handler, whose page calls this API with the token the
	// operator gives it.
	Console http.Handler
	// QueryTimeout bounds each call of the data API: a query, or a
	// transaction with all its statements, the wait for a connection
	// included. PostgreSQL gets it as statement_timeout too, so it stops a
	// statement itself. Default 30s.
	QueryTimeout time.Duration
	// MaxRows caps the rows of a data API response, all statements
	// together; the rest are dropped and the result marked truncated.
	// Default 10,000.
	MaxRows int
	// MaxResultBytes caps the JSON-encoded values of a data API response,
	// all statements together, in bytes, as MaxRows does rows. Default
	// 10 MiB.
	MaxResultBytes int
	// TracerProvider, when set, gets a span for each request (see
	// traceMiddleware), which the work of the request (operations,
	// tenant connections) carries on. Nil makes no spans and reads no
	// traceparent header.
	TracerProvider trace.TracerProvider
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	if c.BodyLimit == 0 {
		c.BodyLimit = DefaultBodyLimit
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.QueryTimeout == 0 {
		c.QueryTimeout = DefaultQueryTimeout
	}
	if c.MaxRows == 0 {
		c.MaxRows = DefaultMaxRows
	}
	if c.MaxResultBytes == 0 {
		c.MaxResultBytes = DefaultMaxResultBytes
	}
	if c.KeyCacheTTL == 0 {
		c.KeyCacheTTL = DefaultKeyCacheTTL
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Catalog == nil:
		return errors.New("api: Config.Catalog is required")
	case c.Provisioner == nil:
		return errors.New("api: Config.Provisioner is required")
	case len(c.AdminToken) < 16:
		return errors.New("api: the admin token must be at least 16 characters")
	case c.MetricsToken != "" && len(c.MetricsToken) < 16:
		return errors.New("api: the metrics token must be at least 16 characters")
	case c.BodyLimit < 1 || c.BodyLimit > MaxBodyLimit:
		return fmt.Errorf("api: body limit %d must be between 1 and %d bytes", c.BodyLimit, MaxBodyLimit)
	case c.RequestTimeout < 0:
		return errors.New("api: request timeout must be positive")
	case c.QueryTimeout < time.Millisecond:
		return errors.New("api: the query timeout must be at least 1ms")
	case c.MaxRows < 0 || c.MaxResultBytes < 0:
		return errors.New("api: the data API's row and size limits must be positive")
	case c.KeyCacheTTL < 0 || c.KeyCacheTTL > MaxKeyCacheTTL:
		return fmt.Errorf("api: the key cache lifetime must be positive and at most %s", MaxKeyCacheTTL)
	}
	return nil
}

// Server serves the HTTP API. Create it with New; it is safe for concurrent
// use.
type Server struct {
	catalog        Catalog
	provisioner    Provisioner
	log            *slog.Logger
	tokenHash      [32]byte
	metricsHash    *[32]byte // of the metrics token; nil when /metrics is open
	requestTimeout time.Duration
	registry       prometheus.Gatherer
	public         map[string]bool
	dataRoutes     map[string]bool // "POST /v1/tenants/:id/query": the routes keys may call
	metricsRoutes  map[string]bool // "GET /metrics": the routes the metrics token guards
	routes         map[string]bool // registered patterns, the only route labels
	tracer         trace.Tracer    // nil: no spans
	bodyLimit      int64
	echo           *echo.Echo

	health         CatalogHealth
	keys           *keyCache
	router         Router
	migrations     Migrations
	rebalancer     Rebalancer
	checker        Checker
	queryTimeout   time.Duration
	maxRows        int
	maxResultBytes int

	seen *lru.Cache[uint64, struct{}] // hashes of statements sent, see execMode
	seed maphash.Seed

	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	// The data API's statements by how they were sent (see execMode), and
	// the prepared ones run again unprepared.
	statements        *prometheus.CounterVec
	prepared, unnamed prometheus.Counter
	unpreparedReruns  prometheus.Counter
	keyChecks         *prometheus.CounterVec // by source: cache or catalog
	pgEndpoint        string                 // see Config.PgEndpoint
	pgTLS             bool
}

// Context keys set on echo contexts.
const (
	ctxRequestID   = "silo.requestID"
	ctxErrorCode   = "silo.errorCode"
	ctxOperationID = "silo.operationID" // of a failed operation, for its problem
	ctxKeyTenant   = "silo.keyTenant"   // the tenant of the key that authenticated the request
)

// untimedRoutes are exempt from the request timeout: the export streams for
// as long as its data takes and bounds each write instead, and the import
// reads for as long as its archive takes (and is exempt from the body
// limit: ImportTenant bounds it) and bounds each read. The data API's
// routes are exempt too; they run under the query timeout.
var untimedRoutes = map[string]bool{"/v1/tenants/:id/export": true, "/v1/tenants/:id/import": true}

// New builds a Server from cfg. It returns an error for an invalid Config.
func New(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	doc, err := LoadSpec()
	if err != nil {
		return nil, err
	}
	s := &Server{
		catalog:        cfg.Catalog,
		provisioner:    cfg.Provisioner,
		log:            cfg.Logger,
		tokenHash:      sha256.Sum256([]byte(cfg.AdminToken)),
		requestTimeout: cfg.RequestTimeout,
		bodyLimit:      cfg.BodyLimit,
		registry:       cfg.Registry,
		public:         publicRoutes(doc),
		dataRoutes:     keyRoutes(doc),
		metricsRoutes:  metricsRoutes(doc),
		health:         cfg.CatalogHealth,
		router:         cfg.Router,
		migrations:     cfg.Migrations,
		rebalancer:     cfg.Rebalancer,
		checker:        cfg.Checker,
		queryTimeout:   cfg.QueryTimeout,
		maxRows:        cfg.MaxRows,
		maxResultBytes: cfg.MaxResultBytes,
		seed:           maphash.MakeSeed(),
		pgEndpoint:     cfg.PgEndpoint,
		pgTLS:          cfg.PgTLS,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "silo_http_requests_total",
			Help: "HTTP requests answered, by route pattern, method and status.",
		}, []string{"route", "method", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "silo_http_request_duration_seconds",
			Help:    "Time to answer HTTP requests, by route pattern, method and status.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms to 16 s
		}, []string{"route", "method", "status"}),
	}
	if cfg.TracerProvider != nil {
		s.tracer = cfg.TracerProvider.Tracer("github.com/silo-db/silo/api")
	}
	if cfg.MetricsToken != "" {
		h := sha256.Sum256([]byte(cfg.MetricsToken))
		s.metricsHash = &h
	}
	if s.seen, err = lru.New[uint64, struct{}](seenStatements); err != nil {
		return nil, err
	}
	if s.keys, err = newKeyCache(cfg.KeyCacheTTL); err != nil {
		return nil, err
	}
	s.keyChecks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "silo_key_checks_total",
		Help: "Tenant keys checked, by source: cache (checked with the catalog within the key cache lifetime) or catalog.",
	}, []string{"source"})
	s.statements = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "silo_data_statements_total",
		Help: "Statements run through the data API, by how they were sent: prepared (cached on the connection) or unnamed.",
	}, []string{"mode"})
	s.prepared, s.unnamed = s.statements.WithLabelValues("prepared"), s.statements.WithLabelValues("unnamed")
	s.unpreparedReruns = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "silo_data_unprepared_reruns_total",
		Help: "Data API calls run again unprepared after a prepared statement was refused before it ran (stale after DDL or DEALLOCATE, or a wrong argument count).",
	})
	for _, c := range []prometheus.Collector{
		s.requests, s.latency, s.statements, s.unpreparedReruns, s.keyChecks,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := cfg.Registry.Register(c); err != nil {
			return nil, fmt.Errorf("api: register metrics: %w", err)
		}
	}

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.errorHandler
	e.Pre(s.requestIDMiddleware)
	if s.tracer != nil {
		// First, so the request's log line and everything after carry
		// its span.
		e.Use(s.traceMiddleware)
	}
	e.Use(s.observeMiddleware, s.bodyLimitMiddleware, s.authMiddleware, s.timeoutMiddleware, s.catalogMiddleware)
	RegisterHandlers(e, s)
	if cfg.Console != nil {
		// Not in the spec: a page, not the API. It holds no data, so it is
		// public; every call it makes needs the token.
		h := echo.WrapHandler(cfg.Console)
		for _, path := range []string{"/console", "/console/*"} {
			e.GET(path, h)
			s.public[http.MethodGet+" "+path] = true
		}
	}
	s.routes = map[string]bool{}
	for _, r := range e.Routes() {
		s.routes[r.Path] = true
	}
	s.echo = e
	return s, nil
}

// ServeHTTP makes the Server an http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.echo.ServeHTTP(w, r) }

// Serve answers requests on ln until ctx is done, then shuts down
// gracefully, giving requests in flight up to shutdownTimeout to finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener, shutdownTimeout time.Duration) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       s.requestTimeout + 10*time.Second,
		WriteTimeout:      max(s.requestTimeout, s.queryTimeout) + 10*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	// HTTP/1.1, and HTTP/2 without TLS for clients that know to ask for it
	// (prior knowledge): many requests share one connection, and its
	// frames share system calls.
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

var requestIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// requestIDMiddleware keeps a caller's X-Request-Id when it is safe to log,
// or makes one, and echoes it in the response.
func (s *Server) requestIDMiddleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		id := c.Request().Header.Get(echo.HeaderXRequestID)
		if !requestIDRE.MatchString(id) {
			var b [12]byte
			_, _ = rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
		c.Set(ctxRequestID, id)
		c.Response().Header().Set(echo.HeaderXRequestID, id)
		return next(c)
	}
}

func requestID(c echo.Context) string {
	id, _ := c.Get(ctxRequestID).(string)
	return id
}

// observeMiddleware logs every request and counts it by route pattern, so
// metrics never carry ids from paths.
func (s *Server) observeMiddleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err) // writes the problem response, so the status is known
		}
		route := c.Path()
		if !s.routes[route] {
			route = "unmatched" // never a raw path: ids would explode the label set
		}
		status := c.Response().Status
		elapsed := time.Since(start)
		method, code := c.Request().Method, strconv.Itoa(status)
		s.requests.WithLabelValues(route, method, code).Inc()
		s.latency.WithLabelValues(route, method, code).Observe(elapsed.Seconds())
		if !s.log.Enabled(c.Request().Context(), slog.LevelInfo) {
			return nil
		}
		attrs := []any{
			"request_id", requestID(c), "method", c.Request().Method, "route", route,
			"path", c.Request().URL.Path, "status", status, "duration_ms", float64(elapsed.Microseconds()) / 1000,
			"bytes_out", c.Response().Size, "remote", c.RealIP(),
		}
		if code, ok := c.Get(ctxErrorCode).(string); ok {
			attrs = append(attrs, "code", code)
		}
		s.log.InfoContext(c.Request().Context(), "http request", attrs...)
		return nil
	}
}

// bodyLimitMiddleware refuses bodies over the limit, whether announced by
// Content-Length or found while reading.
func (s *Server) bodyLimitMiddleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		if untimedRoutes[c.Path()] {
			return next(c) // an import: ImportTenant bounds its archive
		}
		if req.ContentLength > s.bodyLimit {
			return silo.Errorf(silo.ETOOLARGE, "the request body is over the limit of %d bytes", s.bodyLimit)
		}
		req.Body = http.MaxBytesReader(c.Response(), req.Body, s.bodyLimit)
		return next(c)
	}
}

// authMiddleware lets the spec's public routes through and asks every other
// request for the admin token, or, on the data API's routes, for the admin
// token or a tenant key. It runs after routing, so c.Path() is the route
// pattern. It only authenticates: the data API's handlers check that a key
// is the requested tenant's (see dataContext).
func (s *Server) authMiddleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		route := c.Request().Method + " " + c.Path()
		if s.public[route] {
			return next(c)
		}
		if s.metricsRoutes[route] {
			return s.metricsAuth(c, next)
		}
		data := s.dataRoutes[route]
		auth := c.Request().Header.Get(echo.HeaderAuthorization)
		token, ok := strings.CutPrefix(auth, "Bearer ")
		if !ok || token == "" {
			if data {
				return silo.Errorf(silo.EUNAUTHORIZED, "an admin token or a tenant key is required: send Authorization: Bearer TOKEN")
			}
			return silo.Errorf(silo.EUNAUTHORIZED, "an admin token is required: send Authorization: Bearer TOKEN")
		}
		// Comparing hashes keeps the comparison constant-time whatever the
		// length of the token sent.
		got := sha256.Sum256([]byte(token))
		if subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) == 1 {
			ctx := silo.WithActor(c.Request().Context(), silo.Actor{Name: "admin", RequestID: requestID(c)})
			c.SetRequest(c.Request().WithContext(ctx))
			return next(c)
		}
		if !shardmap.IsKeyToken(token) {
			return silo.Errorf(silo.EUNAUTHORIZED, "the token is not valid")
		}
		if !data {
			return silo.Errorf(silo.EUNAUTHORIZED, "a tenant key is good only for its tenant's query and transaction endpoints: this one needs the admin token")
		}
		key, err := s.authenticateKey(c.Request().Context(), got, token)
		if err != nil {
			return err
		}
		c.Set(ctxKeyTenant, key.tenantID)
		ctx := silo.WithActor(c.Request().Context(), silo.Actor{Name: "key/" + key.keyID, RequestID: requestID(c)})
		c.SetRequest(c.Request().WithContext(ctx))
		return next(c)
	}
}

// metricsRoutes returns the route patterns of the operations whose security
// accepts the metricsToken scheme: /metrics.
func metricsRoutes(doc *openapi3.T) map[string]bool {
	return routesWhere(doc, func(op *openapi3.Operation) bool {
		if op.Security == nil {
			return false
		}
		for _, req := range *op.Security {
			if _, ok := req["metricsToken"]; ok {
				return true
			}
		}
		return false
	})
}

// metricsAuth lets a request through to /metrics when the server has no
// metrics token, or when the request sends it. The admin token does not
// open /metrics: a scraper's credential reaches nothing else, and the admin
// token need not sit in a Prometheus configuration.
func (s *Server) metricsAuth(c echo.Context, next echo.HandlerFunc) error {
	if s.metricsHash == nil {
		return next(c)
	}
	token, ok := strings.CutPrefix(c.Request().Header.Get(echo.HeaderAuthorization), "Bearer ")
	if !ok || token == "" {
		return silo.Errorf(silo.EUNAUTHORIZED, "the metrics token is required: send Authorization: Bearer TOKEN")
	}
	// As for the admin token: hashes keep the comparison constant-time
	// whatever the length of the token sent.
	got := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(got[:], s.metricsHash[:]) != 1 {
		return silo.Errorf(silo.EUNAUTHORIZED, "the metrics token is not valid")
	}
	return next(c)
}

// timeoutMiddleware bounds each request's work; database calls take the
// request's context.
func (s *Server) timeoutMiddleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if untimedRoutes[c.Path()] || s.dataRoutes[c.Request().Method+" "+c.Path()] {
			return next(c)
		}
		ctx, cancel := context.WithTimeout(c.Request().Context(), s.requestTimeout)
		defer cancel()
		c.SetRequest(c.Request().WithContext(ctx))
		return next(c)
	}
}

// catalogMiddleware, with Config.CatalogHealth, answers control-plane
// requests 503 at once while the catalog is down, and ends those in flight
// when it goes down, so that none waits out the request timeout on a
// catalog that hangs. The data API's routes need the catalog only for what
// is not cached (key checks, routes), which guard themselves; public routes
// and /metrics need none. An export is refused while the catalog is down,
// but once it streams, an outage does not end it.
func (s *Server) catalogMiddleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		route := c.Request().Method + " " + c.Path()
		if s.health == nil || s.public[route] || s.metricsRoutes[route] || s.dataRoutes[route] {
			return next(c)
		}
		if untimedRoutes[c.Path()] {
			if err := s.health.Err(); err != nil {
				return err
			}
			return next(c)
		}
		ctx, cancel, err := s.health.Guard(c.Request().Context())
		if err != nil {
			return err
		}
		defer cancel()
		c.SetRequest(c.Request().WithContext(ctx))
		err = next(c)
		if cause := shardmap.GuardCause(ctx); err != nil && cause != nil {
			return cause // the catalog went down during the request
		}
		return err
	}
}

// GetHealth answers 200 while the process is up.
func (s *Server) GetHealth(c echo.Context) error {
	return c.JSON(http.StatusOK, Health{Status: "ok"})
}

// GetReady answers 200 when the catalog answers within two seconds.
func (s *Server) GetReady(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	if err := s.catalog.Ping(ctx); err != nil {
		return silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is not reachable")
	}
	return c.JSON(http.StatusOK, Health{Status: "ok"})
}

// GetMetrics serves the registry in the Prometheus text format.
func (s *Server) GetMetrics(c echo.Context) error {
	promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}).ServeHTTP(c.Response(), c.Request())
	return nil
}

// GetOpenAPI serves the contract.
func (s *Server) GetOpenAPI(c echo.Context) error {
	return c.Blob(http.StatusOK, "application/yaml", Spec)
}
