package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/pgcluster"
	"github.com/silo-db/silo/shardmap"
)

// devMarker marks a directory made by `silo dev`, so --reset never removes
// anything else.
const devMarker = ".silo-dev"

type devOptions struct {
	serve         serveOptions
	dir           string
	shards        int
	shardMaxConns int
	reset         bool
}

func newDevCmd(g *globals) *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run Silo locally: a catalog and shard PostgreSQL clusters, and the API",
		Long: "Run Silo with local PostgreSQL clusters under --dir: one for the catalog and --shards\n" +
			"for tenant databases, all on loopback ports. It keeps an admin token and a secret key\n" +
			"in the directory, writes DIR/env for the CLI, and runs in the foreground: Ctrl-C or\n" +
			"SIGTERM stops the API and every cluster it started. A second run reuses the data;\n" +
			"--reset starts over. As root, the clusters run as the postgres system user.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(g.stderr, o.serve.logLevel)
			if err != nil {
				return err
			}
			return runDev(cmd.Context(), o, g.stdout, log)
		},
	}
	addServeFlags(cmd, &o.serve)
	f := cmd.Flags()
	// The wire-protocol endpoint is on in dev, with a self-signed
	// certificate kept in the directory.
	o.serve.pgListen = defaultDevPgListen
	f.Lookup("pg-listen").DefValue = defaultDevPgListen
	f.StringVar(&o.dir, "dir", ".silo", "directory for the clusters, token, key and env file")
	f.IntVar(&o.shards, "shards", 2, "number of shard clusters")
	f.IntVar(&o.shardMaxConns, "shard-max-connections", 200, "max_connections of each shard cluster")
	f.BoolVar(&o.reset, "reset", false, "delete the directory's clusters and data first")
	envNames(cmd, map[string]string{"dir": "SILO_DEV_DIR", "shards": "SILO_DEV_SHARDS",
		"shard-max-connections": "SILO_DEV_SHARD_MAX_CONNECTIONS"})
	return cmd
}

// runDev starts the clusters, serves the API until ctx is done, then stops
// every cluster it started, whatever happened.
func runDev(ctx context.Context, o devOptions, out io.Writer, log *slog.Logger) (err error) {
	if o.shards < 1 || o.shards > 16 {
		return fmt.Errorf("--shards %d must be between 1 and 16", o.shards)
	}
	if o.shardMaxConns < 20 || o.shardMaxConns > 10000 {
		return fmt.Errorf("--shard-max-connections %d must be between 20 and 10000", o.shardMaxConns)
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	if o.reset {
		if err := resetDevDir(dir); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %v", dir, err)
	}
	// The clusters' data directories belong to the postgres user when run
	// as root; it must be able to reach them.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, devMarker), []byte("made by silo dev\n"), 0o644); err != nil {
		return err
	}
	// DIR/env says the API is up: the one a previous run left is stale.
	if err := os.Remove(filepath.Join(dir, "env")); err != nil && !os.IsNotExist(err) {
		return err
	}
	if o.serve.adminToken == "" {
		if o.serve.adminToken, err = keepSecret(filepath.Join(dir, "admin-token")); err != nil {
			return err
		}
	}
	secretKey, err := keepSecret(filepath.Join(dir, "secret-key"))
	if err != nil {
		return err
	}
	if o.serve.secretKey == "" {
		o.serve.secretKey = secretKey
	}

	if o.serve.pgListen != "" && o.serve.pgTLSCert == "" && o.serve.pgTLSKey == "" {
		if o.serve.pgTLSCert, o.serve.pgTLSKey, err = keepDevCertificate(dir); err != nil {
			return err
		}
	}

	binDir, err := pgcluster.EnsureBinDir(ctx, out)
	if err != nil {
		return err
	}
	clusterDir, err := devClusterDir(dir, out)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Starting PostgreSQL (%s): a catalog and %d shards in %s\n", binDir, o.shards, clusterDir)
	names := []string{"catalog"}
	for i := 1; i <= o.shards; i++ {
		names = append(names, fmt.Sprintf("shard-%d", i))
	}
	var cfgs []pgcluster.Config
	for i, name := range names {
		cfg := pgcluster.Config{Dir: filepath.Join(clusterDir, name), BinDir: binDir}
		if i > 0 {
			cfg.MaxConnections = o.shardMaxConns
		}
		cfgs = append(cfgs, cfg)
	}
	clusters, err := pgcluster.StartAll(ctx, cfgs...)
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, c := range clusters {
			if c != nil {
				if serr := c.Stop(sctx); serr != nil && err == nil {
					err = fmt.Errorf("stop cluster in %s: %v", c.Dir(), serr)
				}
			}
		}
		fmt.Fprintln(out, "Stopped Silo and its PostgreSQL clusters.")
	}()
	if err != nil {
		return err
	}
	catalog := clusters[0]
	if err := ensureDatabase(ctx, catalog.DSN("postgres"), "silo"); err != nil {
		return err
	}

	so := o.serve
	so.catalogDSN = catalog.DSN("silo")
	if so.tenantMigrations == "" {
		// A directory of the dev's own, seeded with the example schema, so
		// that `silo migrate create` has somewhere to write.
		if so.tenantMigrations, err = seedTenantMigrations(filepath.Join(dir, "tenant-migrations")); err != nil {
			return err
		}
	}
	setup := func(ctx context.Context, store *shardmap.Store) error {
		ctx = silo.WithActor(ctx, silo.Actor{Name: "silo-dev"})
		for i, c := range clusters[1:] {
			name := names[i+1]
			sh, err := store.GetShard(ctx, name)
			switch {
			case silo.ErrorCode(err) == silo.ENOTFOUND:
				_, err = store.CreateShard(ctx, silo.Shard{Name: name, DSN: c.DSN("postgres"), Region: "local"})
			case err == nil && sh.DSN != c.DSN("postgres"):
				err = fmt.Errorf("shard %q is registered with %s, not this cluster: run silo dev --reset", name, silo.RedactDSN(sh.DSN))
			}
			if err != nil {
				return fmt.Errorf("register shard %s: %w", name, err)
			}
		}
		return nil
	}
	ready := func(addr net.Addr, pg *pgEndpoint, _ *metricsRegistry) {
		url := "http://" + addr.String()
		envFile := filepath.Join(dir, "env")
		env := fmt.Sprintf("export SILO_URL=%s SILO_TOKEN=%s SILO_TENANT_MIGRATIONS=%s\n", url, so.adminToken, shellQuote(so.tenantMigrations))
		if pg != nil {
			env += fmt.Sprintf("export SILO_PG_ADDR=%s\n", pg.advertise)
		}
		// Written whole, then renamed: whoever waits for the file never
		// reads half of it.
		err := os.WriteFile(envFile+".tmp", []byte(env), 0o600)
		if err == nil {
			err = os.Rename(envFile+".tmp", envFile)
		}
		if err != nil {
			fmt.Fprintf(out, "warning: cannot write %s: %v\n", envFile, err)
		}
		fmt.Fprintf(out, "\nSilo is running at %s\n", url)
		if pg != nil {
			tlsNote := "no TLS"
			if pg.tls {
				tlsNote = "TLS with a self-signed certificate: sslmode=require"
				if so.pgTLSCert != filepath.Join(dir, devCertFile) {
					tlsNote = "TLS: sslmode=require"
				}
			}
			fmt.Fprintf(out, "PostgreSQL clients connect at %s (%s)\n", pg.advertise, tlsNote)
		}
		fmt.Fprintln(out)
		for i, c := range clusters {
			db := "postgres"
			if i == 0 {
				db = "silo"
			}
			fmt.Fprintf(out, "  %-9s %s\n", names[i], silo.RedactDSN(c.DSN(db)))
		}
		rel := envFile
		if wd, err := os.Getwd(); err == nil {
			if r, err := filepath.Rel(wd, envFile); err == nil && !strings.HasPrefix(r, "..") {
				rel = r
			}
		}
		fmt.Fprintf(out, "\nTry, in another terminal:\n\n"+
			"  source %s\n"+
			"  bin/silo shard list\n"+
			"  bin/silo tenant create acme\n"+
			"  psql \"$(bin/silo tenant connect acme)\"\n"+
			"  curl -s -H \"Authorization: Bearer $SILO_TOKEN\" $SILO_URL/v1/shards\n\n"+
			"Ctrl-C stops Silo and the clusters; the data stays in %s for the next run.\n", rel, dir)
	}
	return runServer(ctx, so, log, setup, ready)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// seedTenantMigrations makes dir with the embedded example migrations in
// it, unless it exists, and returns its absolute path.
func seedTenantMigrations(dir string) (string, error) {
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	embedded, err := migrations.TenantFS("")
	if err != nil {
		return "", err
	}
	if err := os.CopyFS(dir, embedded); err != nil {
		return "", fmt.Errorf("seed %s: %v", dir, err)
	}
	return dir, nil
}

// devClusterDir returns the directory for the clusters: DIR/clusters, or,
// when running as root and the postgres user cannot reach DIR (a checkout
// under /root, say), a directory under /var/tmp that DIR/clusters links to.
func devClusterDir(dir string, out io.Writer) (string, error) {
	link := filepath.Join(dir, "clusters")
	reachErr := pgcluster.CheckReachable(dir)
	if reachErr == nil {
		if fi, err := os.Lstat(link); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			return filepath.EvalSymlinks(link) // set up by an earlier run; keep its data
		}
		return link, nil
	}
	sum := sha256.Sum256([]byte(dir))
	target := filepath.Join("/var/tmp", "silo-dev-"+hex.EncodeToString(sum[:6]))
	if err := pgcluster.CheckReachable(target); err != nil {
		return "", fmt.Errorf("%v; and neither can it reach %s", reachErr, target)
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return "", err
	}
	if cur, err := os.Readlink(link); err != nil || cur != target {
		_ = os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			return "", fmt.Errorf("link %s to %s: %v", link, target, err)
		}
	}
	fmt.Fprintf(out, "The postgres user cannot reach %s, so the clusters live in %s (linked from %s).\n", dir, target, link)
	return target, nil
}

// keepSecret returns the secret stored in path, making a random one the
// first time.
func keepSecret(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	secret := hex.EncodeToString(b[:])
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %v", path, err)
	}
	return secret, nil
}

// resetDevDir removes a directory made by silo dev, and refuses any other.
func resetDevDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, devMarker)); err != nil && len(entries) > 0 {
		return fmt.Errorf("--reset refuses to delete %s: it was not made by silo dev", dir)
	}
	// Clusters kept outside DIR (see devClusterDir) go too.
	if target, err := os.Readlink(filepath.Join(dir, "clusters")); err == nil && strings.HasPrefix(target, "/var/tmp/silo-dev-") {
		if err := os.RemoveAll(target); err != nil {
			return err
		}
	}
	return os.RemoveAll(dir)
}

// ensureDatabase creates database name on the server at dsn unless it exists.
func ensureDatabase(ctx context.Context, dsn, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect to the catalog cluster: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	return err
}
