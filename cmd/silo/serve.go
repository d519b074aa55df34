package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/console"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/proxy"
	"github.com/silo-db/silo/rebalancer"
	"github.com/silo-db/silo/reconcile"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
	"github.com/silo-db/silo/tracing"
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

	secretKey           string
	secretKeyPrevious   []string
	metricsToken        string
	tenantMigrations    string
	warmPoolSize        int
	gracePeriod         time.Duration
	recoveryDelay       time.Duration
	stepTimeout         time.Duration
	maintenanceInterval time.Duration
	maxOperations       int
	autoMigrate         bool
	migrateWorkers      int

	shardBudget     int
	tenantMaxConns  int
	acquireTimeout  time.Duration
	maxMessageBytes int
	keyCacheTTL     time.Duration

	pgListen     string
	pgAdvertise  string
	pgTLSCert    string
	pgTLSKey     string
	pgMaxClients int
	pgServerWait time.Duration
}

// addServeFlags registers the server's flags and their environment variables.
func addServeFlags(cmd *cobra.Command, o *serveOptions) {
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address the HTTP API listens on")
	f.StringVar(&o.adminToken, "admin-token", "", "admin bearer token, 16 characters at least")
	f.Int64Var(&o.bodyLimit, "body-limit", api.DefaultBodyLimit, "largest request body in bytes (at most 10 MiB)")
	f.DurationVar(&o.requestTimeout, "request-timeout", api.DefaultRequestTimeout, "time limit of each API request, database calls included")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "time requests in flight, and running operation steps, get to finish on shutdown")
	f.DurationVar(&o.connectTimeout, "connect-timeout", 5*time.Second, "time limit of each new database connection")
	f.DurationVar(&o.statementTimeout, "statement-timeout", 10*time.Second, "time limit of each catalog statement")
	f.Int32Var(&o.catalogMaxConns, "catalog-max-conns", 25, "connections to the catalog at most")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.secretKey, "secret-key", "", "64 hex characters that seal tenant passwords and shard DSNs in the catalog")
	f.StringSliceVar(&o.secretKeyPrevious, "secret-key-previous", nil, "earlier secret keys, comma-separated: they open what they sealed until `silo secrets reseal` moves it to --secret-key")
	f.StringVar(&o.metricsToken, "metrics-token", "", "bearer token that /metrics asks for, 16 characters at least (default: /metrics is open)")
	f.StringVar(&o.tenantMigrations, "tenant-migrations", "", "directory of goose SQL files for tenant databases (default: the embedded example schema)")
	f.IntVar(&o.warmPoolSize, "warm-pool-size", provisioner.DefaultWarmPoolSize, "ready databases kept on each shard for fast creates (0 turns the pool off)")
	f.DurationVar(&o.gracePeriod, "grace-period", provisioner.DefaultGracePeriod, "how long a deleted tenant's database is kept before it is purged")
	f.DurationVar(&o.recoveryDelay, "recovery-delay", engine.DefaultRecoveryDelay, "how soon another server resumes an operation whose server died (its lease on the catalog gone)")
	f.DurationVar(&o.stepTimeout, "step-timeout", 30*time.Second, "time limit of each step of a tenant operation")
	f.DurationVar(&o.maintenanceInterval, "maintenance-interval", provisioner.DefaultMaintenanceInterval, "how often shard templates and warm pools are checked")
	f.IntVar(&o.maxOperations, "max-operations", engine.DefaultMaxConcurrentOps, "tenant operations this server runs at once")
	f.BoolVar(&o.autoMigrate, "auto-migrate", false, "at startup, start a migration run for tenants behind the latest tenant migration")
	f.IntVar(&o.migrateWorkers, "migrate-workers", migrations.DefaultWorkers, "tenant migrations this server runs at once (a run's --concurrency bounds them fleet-wide)")
	f.IntVar(&o.shardBudget, "shard-budget", router.DefaultShardBudget, "connections this server opens to one shard for tenant queries, all tenants together")
	f.IntVar(&o.tenantMaxConns, "tenant-max-conns", router.DefaultTenantMaxConns, "connections one tenant may hold, so a hot tenant cannot starve the others")
	f.DurationVar(&o.acquireTimeout, "acquire-timeout", router.DefaultAcquireTimeout, "how long a tenant query waits for a connection within the budget")
	f.IntVar(&o.maxMessageBytes, "max-message-bytes", router.DefaultMaxMessageBytes, "largest row, error or notice a tenant query may return, in bytes (1 MiB at least); a larger one fails with 413")
	f.DurationVar(&o.keyCacheTTL, "key-cache-ttl", api.DefaultKeyCacheTTL, "how long a tenant key the catalog accepted is accepted again without asking it (at most 10m): a key revoked through another server works here that long")
	f.StringVar(&o.pgListen, "pg-listen", "", "address the wire-protocol endpoint listens on, e.g. 127.0.0.1:6432 (default: none)")
	f.StringVar(&o.pgAdvertise, "pg-advertise", "", "host:port clients reach the wire-protocol endpoint at, for the connection strings it hands out (default: the --pg-listen address)")
	f.StringVar(&o.pgTLSCert, "pg-tls-cert", "", "PEM certificate the wire-protocol endpoint offers clients (with --pg-tls-key)")
	f.StringVar(&o.pgTLSKey, "pg-tls-key", "", "PEM private key of --pg-tls-cert")
	f.IntVar(&o.pgMaxClients, "pg-max-clients", proxy.DefaultMaxClients, "client connections the wire-protocol endpoint holds at once")
	f.DurationVar(&o.pgServerWait, "pg-server-wait-timeout", proxy.DefaultServerWaitTimeout, "how long a wire-protocol client waits for a server connection within the budget before its statement fails (57P03)")
	envNames(cmd, map[string]string{
		"pg-listen": "SILO_PG_LISTEN", "pg-advertise": "SILO_PG_ADVERTISE", "pg-tls-cert": "SILO_PG_TLS_CERT",
		"pg-tls-key": "SILO_PG_TLS_KEY", "pg-max-clients": "SILO_PG_MAX_CLIENTS", "pg-server-wait-timeout": "SILO_PG_SERVER_WAIT_TIMEOUT",
	})
	envNames(cmd, map[string]string{
		"shard-budget": "SILO_SHARD_BUDGET", "tenant-max-conns": "SILO_TENANT_MAX_CONNS", "acquire-timeout": "SILO_ACQUIRE_TIMEOUT",
		"max-message-bytes": "SILO_MAX_MESSAGE_BYTES", "key-cache-ttl": "SILO_KEY_CACHE_TTL",
	})
	envNames(cmd, map[string]string{
		"secret-key": "SILO_SECRET_KEY", "secret-key-previous": "SILO_SECRET_KEY_PREVIOUS",
		"metrics-token": "SILO_METRICS_TOKEN", "tenant-migrations": "SILO_TENANT_MIGRATIONS",
		"warm-pool-size": "SILO_WARM_POOL_SIZE", "grace-period": "SILO_GRACE_PERIOD",
		"recovery-delay": "SILO_RECOVERY_DELAY", "step-timeout": "SILO_STEP_TIMEOUT",
		"maintenance-interval": "SILO_MAINTENANCE_INTERVAL", "max-operations": "SILO_MAX_OPERATIONS",
		"auto-migrate": "SILO_AUTO_MIGRATE", "migrate-workers": "SILO_MIGRATE_WORKERS",
	})
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
			return runServer(cmd.Context(), o, log, nil, func(addr net.Addr, pg *pgEndpoint, _ *metricsRegistry) {
				if pg != nil {
					log.Info("silo serving", "version", version, "addr", addr.String(), "pg_addr", pg.addr, "pg_tls", pg.tls)
					return
				}
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
	// Lines logged with a context that carries a span name its trace.
	return slog.New(tracing.LogHandler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))), nil
}

// runServer opens and migrates the catalog, runs setup (if any) on the
// store, listens, calls ready with the bound address, the wire-protocol
// endpoint (nil without --pg-listen) and the metrics registry, and serves
// until ctx is done.
func runServer(ctx context.Context, o serveOptions, log *slog.Logger,
	setup func(context.Context, *shardmap.Store) error, ready func(net.Addr, *pgEndpoint, *metricsRegistry)) error {
	if len(o.adminToken) < 16 {
		return fmt.Errorf("--admin-token (or SILO_ADMIN_TOKEN) must be at least 16 characters")
	}
	if o.metricsToken != "" && len(o.metricsToken) < 16 {
		return fmt.Errorf("--metrics-token (or SILO_METRICS_TOKEN) must be at least 16 characters")
	}
	// key is the key ring: the provisioner and the router seal with its
	// first key and open with any.
	key, sealer, err := secretKeys(o.secretKey, o.secretKeyPrevious)
	if err != nil {
		return err
	}
	tenantFS, err := migrations.TenantFS(o.tenantMigrations)
	if err != nil {
		return fmt.Errorf("--tenant-migrations: %v", err)
	}
	if o.warmPoolSize < 0 {
		return fmt.Errorf("--warm-pool-size %d must not be negative", o.warmPoolSize)
	}
	traces, err := tracing.Start(ctx, version, log)
	if err != nil {
		return err
	}
	defer flushTraces(ctx, traces, o.shutdownTimeout, log)()
	if traces.Enabled() {
		log.Info("traces exported over OTLP", "endpoint", traces.Endpoint())
	} else {
		log.Info("traces off", "reason", traces.Off())
	}
	tp := traces.TracerProvider()
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
	registry := newMetricsRegistry()
	store, err := shardmap.New(shardmap.Config{Pool: pool, Logger: log, ProbeTimeout: o.connectTimeout, Sealer: sealer, Registry: registry})
	if err != nil {
		return err
	}
	// A catalog upgraded from before sealed DSNs has its plaintext ones
	// sealed now, before anything reads them.
	if _, err := store.SealPlaintextDSNs(ctx); err != nil {
		return fmt.Errorf("seal the shard DSNs: %w", err)
	}
	log.Info("secret keys", "current", sealer.KeyID(), "previous", sealer.PreviousKeyIDs())
	// One dialer builds every connection to a shard, as its admin or as a
	// tenant's own role.
	dialer, err := shardmap.NewDialer(shardmap.DialerConfig{Store: store, Sealer: sealer, ConnectTimeout: o.connectTimeout, Logger: log})
	if err != nil {
		return err
	}
	if setup != nil {
		if err := setup(ctx, store); err != nil {
			return err
		}
	}
	warm := o.warmPoolSize
	if warm == 0 {
		warm = -1 // off; the provisioner reads 0 as "the default"
	}
	// The engine runs every operation and job; the provisioner, the
	// rebalancer (moves) and the runner register theirs with it before it
	// starts.
	eng, err := engine.New(engine.Config{
		Catalog: pool, Store: store, StepTimeout: o.stepTimeout, RecoveryDelay: o.recoveryDelay,
		MaxConcurrentOps: o.maxOperations, Logger: log, Registry: registry, TracerProvider: tp,
	})
	if err != nil {
		return err
	}
	prov, err := provisioner.New(provisioner.Config{
		Catalog: pool, Store: store, Engine: eng, Dialer: dialer, SecretKey: key, TenantMigrations: tenantFS,
		WarmPoolSize: warm, GracePeriod: o.gracePeriod, MaintenanceInterval: o.maintenanceInterval,
		ConnectTimeout: o.connectTimeout, PgDump: findPgDump(), Logger: log, Registry: registry,
	})
	if err != nil {
		return err
	}
	reb, err := rebalancer.New(rebalancer.Config{
		Catalog: pool, Store: store, Dialer: dialer, Engine: eng, Provisioner: prov, Logger: log, Registry: registry,
	})
	if err != nil {
		return err
	}
	runner, err := migrations.NewRunner(migrations.Config{
		Catalog: pool, Store: store, Engine: eng, Dialer: dialer, Files: tenantFS, Templates: prov,
		Workers: o.migrateWorkers, ConnectTimeout: o.connectTimeout, Logger: log, Registry: registry, TracerProvider: tp,
	})
	if err != nil {
		return err
	}
	if err := eng.Start(ctx); err != nil {
		return err
	}
	// On SIGTERM the engine stops at once, beside the HTTP drain: running
	// steps reach their boundary, and what is cut short is resumed by
	// another server as soon as this one's leases are gone.
	ctx, stop := context.WithCancel(ctx) // also when serve returns early
	engineStopped := make(chan struct{})
	go func() {
		defer close(engineStopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.shutdownTimeout)
		defer cancel()
		if err := eng.Stop(sctx); err != nil {
			log.Warn("engine stop", "err", err)
		}
		if err := prov.Stop(sctx); err != nil {
			log.Warn("provisioner stop", "err", err)
		}
	}()
	defer func() { stop(); <-engineStopped }()
	if err := startupMigrations(ctx, runner, o.autoMigrate, log); err != nil {
		return err
	}
	// One watch on the catalog: while it is down, the router serves the
	// tenants it has routes for and the API refuses the rest at once.
	health, err := shardmap.NewCatalogHealth(shardmap.CatalogHealthConfig{Pool: pool, Logger: log})
	if err != nil {
		return err
	}
	if err := health.Start(ctx); err != nil {
		return err
	}
	defer health.Stop()
	rt, err := router.New(router.Config{
		Catalog: pool, Store: store, Dialer: dialer, SecretKey: key, CatalogHealth: health, ShardBudget: o.shardBudget,
		TenantMaxConns: o.tenantMaxConns, AcquireTimeout: o.acquireTimeout, MaxMessageBytes: o.maxMessageBytes,
		ConnectTimeout: o.connectTimeout, Logger: log, Registry: registry, TracerProvider: tp,
	})
	if err != nil {
		return err
	}
	if err := rt.Start(ctx); err != nil {
		return err
	}
	defer rt.Stop()
	// The wire-protocol endpoint shares the router, and so its budgets,
	// with the HTTP API. On SIGTERM it stops taking connections and ends
	// each client's at its next idle moment, beside the HTTP drain.
	var pg *pgEndpoint
	if o.pgListen != "" {
		if pg, err = startPgEndpoint(ctx, o, key, rt, store, log, registry); err != nil {
			return err
		}
		defer func() { stop(); pg.wait() }()
	}
	checker, err := reconcile.New(reconcile.Config{Store: store, Dialer: dialer, Dropper: prov, Logger: log, Registry: registry})
	if err != nil {
		return err
	}
	srv, err := api.New(api.Config{
		Catalog: store, Provisioner: prov, Router: rt, Migrations: runner, Rebalancer: reb, Checker: checker, CatalogHealth: health,
		AdminToken: o.adminToken, Logger: log,
		Registry: registry, BodyLimit: o.bodyLimit, RequestTimeout: o.requestTimeout, MetricsToken: o.metricsToken,
		KeyCacheTTL: o.keyCacheTTL, PgEndpoint: pg.advertised(), PgTLS: pg != nil && pg.tls, TracerProvider: tp,
		Console: console.Handler(),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %v", o.listen, err)
	}
	ready(ln.Addr(), pg, registry)
	err = srv.Serve(ctx, ln, o.shutdownTimeout)
	log.Info("silo stopped")
	return err
}

// flushTraces returns the function that shuts traces down when the server
// returns: it runs last, once the HTTP server, the engine and the router
// have stopped and their spans have ended, and exports what is buffered
// within what is left of the shutdown timeout, counted from the moment
// ctx ended (or from the return, when the server stops on an error).
func flushTraces(ctx context.Context, traces *tracing.Provider, timeout time.Duration, log *slog.Logger) func() {
	var began atomic.Pointer[time.Time]
	stopWatch := context.AfterFunc(ctx, func() {
		now := time.Now()
		began.Store(&now)
	})
	return func() {
		stopWatch()
		deadline := time.Now().Add(timeout)
		if t := began.Load(); t != nil {
			deadline = t.Add(timeout)
		}
		sctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
		defer cancel()
		if err := traces.Shutdown(sctx); err != nil {
			log.Warn("traces not flushed", "err", err)
		}
	}
}

// startupMigrations reports tenants behind the latest migration file and,
// with --auto-migrate, starts a run for them (unless one is in progress).
func startupMigrations(ctx context.Context, runner *migrations.Runner, auto bool, log *slog.Logger) error {
	pending, latest, err := runner.Pending(ctx)
	if err != nil {
		return err
	}
	if pending == 0 {
		return nil
	}
	if !auto {
		log.Warn("tenant migrations pending: run `silo migrate up`, or start with --auto-migrate",
			"tenants", pending, "latest", latest)
		return nil
	}
	run, err := runner.StartRun(silo.WithActor(ctx, silo.Actor{Name: "auto-migrate"}), migrations.RunOptions{})
	switch {
	case silo.ErrorCode(err) == silo.ECONFLICT:
		log.Info("tenant migrations pending; a run is already in progress", "tenants", pending, "latest", latest)
		return nil
	case err != nil:
		return fmt.Errorf("--auto-migrate: %w", err)
	}
	log.Info("tenant migrations pending: run started (--auto-migrate)", "tenants", pending, "latest", latest, "run", run.ID)
	return nil
}

// findPgDump returns the pg_dump beside the PostgreSQL server binaries (the
// newest found), or the one on PATH.
func findPgDump() string {
	if dir, err := pgcluster.FindBinDir(); err == nil {
		if _, err := os.Stat(filepath.Join(dir, "pg_dump")); err == nil {
			return filepath.Join(dir, "pg_dump")
		}
	}
	return "pg_dump"
}
