package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/silo-db/silo/proxy"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

// pgEndpoint is a running wire-protocol endpoint.
type pgEndpoint struct {
	srv       *proxy.Server
	addr      string // listening
	advertise string // for connection strings
	tls       bool
	done      chan struct{}
}

// advertised is the address connection strings name; "" without an
// endpoint.
func (p *pgEndpoint) advertised() string {
	if p == nil {
		return ""
	}
	return p.advertise
}

// wait waits for the endpoint's shutdown, begun when the server's context
// ended.
func (p *pgEndpoint) wait() { <-p.done }

// startPgEndpoint listens on --pg-listen and serves the wire-protocol
// endpoint until ctx ends; then it shuts down within --shutdown-timeout.
func startPgEndpoint(ctx context.Context, o serveOptions, keyRing []byte, rt *router.Router, store *shardmap.Store,
	log *slog.Logger, reg prometheus.Registerer) (*pgEndpoint, error) {
	var tlsCfg *tls.Config
	switch {
	case o.pgTLSCert != "" && o.pgTLSKey != "":
		cert, err := tls.LoadX509KeyPair(o.pgTLSCert, o.pgTLSKey)
		if err != nil {
			return nil, fmt.Errorf("--pg-tls-cert, --pg-tls-key: %v", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	case o.pgTLSCert != "" || o.pgTLSKey != "":
		return nil, errors.New("--pg-tls-cert and --pg-tls-key go together")
	}
	// The salt shown for unknown tenant ids must be the same on every
	// server: it is derived from the current secret key, which they share.
	mock := sha256.Sum256(append([]byte("silo proxy mock salt\x00"), keyRing[:shardmap.SecretKeyLen]...))
	srv, err := proxy.New(proxy.Config{
		Router: rt, Logins: store, MockSecret: mock[:], TLS: tlsCfg, MaxClients: o.pgMaxClients,
		ServerWaitTimeout: o.pgServerWait,
		MaxMessageBytes:   o.maxMessageBytes, LoginCacheTTL: o.keyCacheTTL, Logger: log, Registry: reg,
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", o.pgListen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %v", o.pgListen, err)
	}
	p := &pgEndpoint{srv: srv, addr: ln.Addr().String(), advertise: o.pgAdvertise, tls: tlsCfg != nil, done: make(chan struct{})}
	if p.advertise == "" {
		p.advertise = p.addr
	} else if _, _, err := net.SplitHostPort(p.advertise); err != nil {
		ln.Close()
		return nil, fmt.Errorf("--pg-advertise %q: %v", o.pgAdvertise, err)
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, proxy.ErrServerClosed) {
			log.Error("wire-protocol endpoint stopped", "err", err)
		}
	}()
	go func() {
		defer close(p.done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("wire-protocol endpoint: clients cut off at shutdown", "err", err)
		}
	}()
	return p, nil
}
