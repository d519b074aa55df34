package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

// Defaults of Config.
const (
	DefaultMaxClients    = 10000
	DefaultAuthTimeout   = 15 * time.Second
	DefaultLoginCacheTTL = 30 * time.Second
	// DefaultServerWaitTimeout bounds a client's wait for a server
	// connection when its shard's budget is in use.
	DefaultServerWaitTimeout = 30 * time.Second
	// DefaultMaxBatchBytes bounds the extended-protocol messages a client
	// may send before a Sync or Flush: they are held until then.
	DefaultMaxBatchBytes = 64 << 20
)

// Logins reads what a client's login is checked against. *shardmap.Store
// implements it.
type Logins interface {
	GetTenantLogin(ctx context.Context, tenantID string) (*shardmap.TenantLogin, error)
	TouchKey(ctx context.Context, keyID string)
}

// Config configures a Server.
type Config struct {
	Router *router.Router
	Logins Logins
	// MockSecret derives the SCRAM salt shown for a tenant id that has no
	// login, so that it is the same on every server and every attempt, as
	// a real tenant's is: at least 16 bytes, the same on every server.
	MockSecret []byte
	// TLS, if set, is offered to clients that ask (sslmode=prefer or
	// require); without it they are told no, and connect in the clear.
	TLS *tls.Config
	// MaxClients bounds the client connections open at once; more are
	// refused with 53300. Default DefaultMaxClients.
	MaxClients int
	// MaxMessageBytes bounds each message a client sends. Default
	// router.DefaultMaxMessageBytes.
	MaxMessageBytes int
	// MaxBatchBytes bounds what the endpoint holds for one client: the
	// messages held for one Sync, its named prepared statements (kept to
	// be prepared again on other server connections) and its run-time
	// parameters, each counted with the endpoint's own bookkeeping. A
	// client over it is disconnected with 54000. Default
	// DefaultMaxBatchBytes.
	MaxBatchBytes int
	// AuthTimeout bounds a client's startup, authentication included.
	AuthTimeout time.Duration
	// ServerWaitTimeout bounds a client's wait for a server connection
	// within its shard's budget and its tenant's cap (PgBouncer's
	// query_wait_timeout); past it the client is told 57P03 and may try
	// again. Default DefaultServerWaitTimeout.
	ServerWaitTimeout time.Duration
	// LoginCacheTTL is how long a login the catalog gave is used again
	// while the catalog is down (never while it is up). Default
	// DefaultLoginCacheTTL.
	LoginCacheTTL time.Duration
	Logger        *slog.Logger
	// Registry gets the endpoint's metrics; nil registers none.
	Registry prometheus.Registerer
}

func (c Config) withDefaults() Config {
	if c.MaxClients == 0 {
		c.MaxClients = DefaultMaxClients
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = router.DefaultMaxMessageBytes
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if c.AuthTimeout == 0 {
		c.AuthTimeout = DefaultAuthTimeout
	}
	if c.LoginCacheTTL == 0 {
		c.LoginCacheTTL = DefaultLoginCacheTTL
	}
	if c.ServerWaitTimeout == 0 {
		c.ServerWaitTimeout = DefaultServerWaitTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Router == nil || c.Logins == nil:
		return errors.New("proxy: Config.Router and Config.Logins are required")
	case len(c.MockSecret) < 16:
		return errors.New("proxy: Config.MockSecret must be at least 16 bytes")
	case c.MaxClients < 1 || c.MaxMessageBytes < 1<<10 || c.MaxBatchBytes < c.MaxMessageBytes:
		return errors.New("proxy: MaxClients must be positive, MaxMessageBytes at least 1 KiB and MaxBatchBytes at least MaxMessageBytes")
	case c.AuthTimeout <= 0 || c.LoginCacheTTL < 0 || c.ServerWaitTimeout < 0:
		return errors.New("proxy: AuthTimeout must be positive, LoginCacheTTL and ServerWaitTimeout not negative")
	}
	return nil
}

// Server is the wire-protocol endpoint. Create it with New, then Serve
// listeners; Shutdown ends it. It is safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	logins  *expirable.LRU[string, *shardmap.TenantLogin] // for catalog outages

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	clients   map[uint32]*clientConn // by the process id the client was given
	open      int                    // connections, authenticated or not
	closing   bool

	wg       sync.WaitGroup
	shutdown chan struct{} // closed when Shutdown begins
	shutOnce sync.Once
}

// New returns a Server. It returns an error for an invalid Config.
func New(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: newMetrics(), listeners: map[net.Listener]struct{}{},
		clients: map[uint32]*clientConn{}, shutdown: make(chan struct{})}
	s.logins = expirable.NewLRU[string, *shardmap.TenantLogin](100000, nil, max(cfg.LoginCacheTTL, time.Millisecond))
	if cfg.Registry != nil {
		if err := s.metrics.register(cfg.Registry); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts client connections on ln until Shutdown, and returns
// ErrServerClosed then. Each connection is served in a goroutine of its
// own.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			select {
			case <-s.shutdown:
				return ErrServerClosed
			default:
			}
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		s.open++
		over := s.open > s.cfg.MaxClients
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				s.open--
				s.mu.Unlock()
			}()
			if tc, ok := nc.(*net.TCPConn); ok {
				_ = tc.SetNoDelay(true)
				_ = tc.SetKeepAlive(true)
			}
			s.serveConn(nc, over)
		}()
	}
}

// Shutdown stops accepting connections, ends each client's connection at
// its next idle moment (no transaction open) with 57P01, and waits for
// them until ctx ends; then it closes the rest, their transactions rolled
// back. It returns ctx's error if clients were cut off.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		for ln := range s.listeners {
			ln.Close()
		}
		clients := make([]*clientConn, 0, len(s.clients))
		for _, c := range s.clients {
			clients = append(clients, c)
		}
		s.mu.Unlock()
		close(s.shutdown)
		for _, c := range clients {
			c.wakeIdle()
		}
	})
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for _, c := range s.clients {
		c.kill()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

// register gives an authenticated client its process id and secret key,
// for cancel requests. Process ids are random and unique among the
// clients of this server.
func (s *Server) register(c *clientConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		var b [8]byte
		_, _ = rand.Read(b[:])
		pid := binary.BigEndian.Uint32(b[:4]) & 0x7fffffff
		if _, taken := s.clients[pid]; pid == 0 || taken {
			continue
		}
		c.pid, c.secret = pid, b[4:]
		s.clients[pid] = c
		return
	}
}

func (s *Server) unregister(c *clientConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clients[c.pid] == c {
		delete(s.clients, c.pid)
	}
}

// clientCount returns the authenticated clients by pool mode.
func (s *Server) clientCount() (transaction, session int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.clients {
		if c.session {
			session++
		} else {
			transaction++
		}
	}
	return transaction, session
}
