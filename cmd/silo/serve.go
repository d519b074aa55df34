package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/shardmap"
)

// serveOptions are the settings of a control-plane server, shared by
// `silo serve` and `silo dev`.
type serveOptions struct {
	listen           string
	catalogDSN       string
	adminToken       string
	bodyLimit        int64
	requestTimeout   time.Duration
	shutdownTimeout  time.Duration
	connectTimeout   time.Duration
	statementTimeout time.Duration
	catalogMaxConns  int32
	logLevel         string
}

// addServeFlags registers the server's flags and their environment variables.
func addServeFlags(cmd *cobra.Command, o *serveOptions) {
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address the HTTP API listens on")
	f.StringVar(&o.adminToken, "admin-token", "", "admin bearer token, 16 characters at least")
	f.Int64Var(&o.bodyLimit, "body-limit", api.DefaultBodyLimit, "largest request body in bytes (at most 10 MiB)")
	f.DurationVar(&o.requestTimeout, "request-timeout", api.DefaultRequestTimeout, "time limit of each API request, database calls included")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "time requests in flight get to finish on shutdown")
	f.DurationVar(&o.connectTimeout, "connect-timeout", 5*time.Second, "time limit of each new database connection")
	f.DurationVar(&o.statementTimeout, "statement-timeout", 10*time.Second, "time limit of each catalog statement")
	f.Int32Var(&o.catalogMaxConns, "catalog-max-conns", 10, "connections to the catalog at most")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	envNames(cmd, map[string]string{
		"listen": "SILO_LISTEN", "admin-token": "SILO_ADMIN_TOKEN", "body-limit": "SILO_BODY_LIMIT",
		"request-timeout": "SILO_REQUEST_TIMEOUT", "shutdown-timeout": "SILO_SHUTDOWN_TIMEOUT",
		"connect-timeout": "SILO_CONNECT_TIMEOUT", "statement-timeout": "SILO_STATEMENT_TIMEOUT",
		"catalog-max-conns": "SILO_CATALOG_MAX_CONNS", "log-level": "SILO_LOG_LEVEL",
	})
}

func newServeCmd(g *globals) *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the control plane: migrate the catalog and serve the HTTP API",
		Long: "Run the control plane. It applies pending catalog migrations under a lock (several\n" +
			"servers may start at once), then serves the HTTP API until SIGINT or SIGTERM.\n" +
			"The server keeps no state of its own: run as many as you like against one catalog.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.catalogDSN == "" {
				return fmt.Errorf("--catalog-dsn (or SILO_CATALOG_DSN) is required")
			}
			log, err := newLogger(g.stderr, o.logLevel)
			if err != nil {
				return err
			}
			return runServer(cmd.Context(), o, log, nil, func(addr net.Addr) {
				log.Info("silo serving", "version", version, "addr", addr.String())
			})
		},
	}
	addServeFlags(cmd, &o)
	cmd.Flags().StringVar(&o.catalogDSN, "catalog-dsn", "", "PostgreSQL connection string of the catalog database")
	envNames(cmd, map[string]string{"catalog-dsn": "SILO_CATALOG_DSN"})
	return cmd
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q must be debug, info, warn or error", level)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// runServer opens and migrates the catalog, runs setup (if any) on the
// store, listens, calls ready with the bound address, and serves until ctx
// is done.
func runServer(ctx context.Context, o serveOptions, log *slog.Logger,
	setup func(context.Context, *shardmap.Store) error, ready func(net.Addr)) error {
	if len(o.adminToken) < 16 {
		return fmt.Errorf("--admin-token (or SILO_ADMIN_TOKEN) must be at least 16 characters")
	}
	pool, err := shardmap.OpenCatalog(ctx, o.catalogDSN, o.catalogMaxConns, o.connectTimeout, o.statementTimeout)
	if err != nil {
		return err
	}
	defer pool.Close()
	// Migrations may wait for another server's lock; a minute is plenty.
	mctx, cancel := context.WithTimeout(ctx, time.Minute)
	v, err := migrations.ApplyCatalog(mctx, pool, log)
	cancel()
	if err != nil {
		return err
	}
	log.Info("catalog ready", "version", v)
	store, err := shardmap.New(shardmap.Config{Pool: pool, Logger: log, ProbeTimeout: o.connectTimeout})
	if err != nil {
		return err
	}
	if setup != nil {
		if err := setup(ctx, store); err != nil {
			return err
		}
	}
	srv, err := api.New(api.Config{
		Catalog: store, AdminToken: o.adminToken, Logger: log,
		BodyLimit: o.bodyLimit, RequestTimeout: o.requestTimeout,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %v", o.listen, err)
	}
	ready(ln.Addr())
	err = srv.Serve(ctx, ln, o.shutdownTimeout)
	log.Info("silo stopped")
	return err
}
