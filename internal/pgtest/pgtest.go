package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo/pgcluster"
)

const (
	installTimeout = 15 * time.Minute // EnsureBinDir may run apt-get or npm
	startTimeout   = 2 * time.Minute
	stopTimeout    = 30 * time.Second
	sqlTimeout     = 30 * time.Second
	maxConnections = 300
)

// Fleet is the test binary's clusters. Tests share it and must not stop it.
type Fleet struct {
	Catalog *pgcluster.Cluster
	Shards  []*pgcluster.Cluster // two

	// Major is the PostgreSQL major version every cluster runs, such as 15
	// or 17 (SILO_PG_VERSION), for tests that skip or branch on it:
	//
	//	if pgtest.Start(t).Major < 16 {
	//		t.Skip("a subscription owned by a non-superuser needs PostgreSQL 16")
	//	}
	Major int
}

var (
	mainCalled atomic.Bool

	mu       sync.Mutex // guards the fleet while it starts and stops
	fleet    *Fleet
	fleetErr error
	fleetDir string
	started  []*pgcluster.Cluster // stopped by Main, fleet or not

	databases atomic.Int64
)

// Main runs the package's tests, then stops the clusters Start started and
// removes their directory. With SILO_TEST_KEEP=1 it keeps the directory and
// prints its path to stderr (go test shows it with -v or on failure).
// It exits the process with the tests' status, or 1 if a cluster did not stop
// cleanly. Use it as
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
func Main(m *testing.M) {
	mainCalled.Store(true)
	code := m.Run()
	if err := shutdown(); err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// Start returns the test binary's fleet, starting it on first use: a catalog
// and two shards, started concurrently with Fast and MaxConnections 300 in one
// temporary directory. PostgreSQL is found, or installed, with
// pgcluster.EnsureBinDir, so SILO_PG_VERSION and SILO_PG_BINDIR choose it. Start fails the test with t.Fatal if the fleet
// cannot start, and every later call fails the same way without retrying.
// The package's TestMain must call Main. Start is safe for concurrent use;
// callers wait while the fleet starts.
func Start(t testing.TB) *Fleet {
	t.Helper()
	if !mainCalled.Load() {
		t.Fatal("pgtest: Start needs the package to have func TestMain(m *testing.M) { pgtest.Main(m) }")
	}
	mu.Lock()
	defer mu.Unlock()
	if fleet == nil && fleetErr == nil {
		fleet, fleetErr = startFleet()
	}
	if fleetErr != nil {
		t.Fatalf("pgtest: %v", fleetErr)
	}
	return fleet
}

// startFleet starts the clusters, recording in started those it must stop.
// It runs with mu held.
func startFleet() (*Fleet, error) {
	ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
	defer cancel()
	binDir, err := pgcluster.EnsureBinDir(ctx, os.Stderr)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "silo-pgtest-")
	if err != nil {
		return nil, fmt.Errorf("cluster directory: %w", err)
	}
	fleetDir = dir
	// As root, the clusters run as the postgres user, which must reach them.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster directory: %w", err)
	}

	ctx, cancel = context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var cfgs []pgcluster.Config
	for _, name := range []string{"catalog", "shard0", "shard1"} {
		cfgs = append(cfgs, pgcluster.Config{
			Dir:            filepath.Join(dir, name),
			BinDir:         binDir,
			Fast:           true,
			MaxConnections: maxConnections,
		})
	}
	clusters, err := pgcluster.StartAll(ctx, cfgs...)
	for _, c := range clusters {
		if c != nil {
			started = append(started, c)
		}
	}
	if err != nil {
		return nil, err
	}
	return &Fleet{Catalog: clusters[0], Shards: clusters[1:], Major: clusters[0].Major()}, nil
}

// shutdown stops the started clusters and removes their directory.
func shutdown() error {
	mu.Lock()
	defer mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	errs := make([]error, len(started))
	var wg sync.WaitGroup
	for i, c := range started {
		wg.Go(func() { errs[i] = c.Stop(ctx) })
	}
	wg.Wait()
	started = nil
	if fleetDir == "" {
		return errors.Join(errs...)
	}
	if os.Getenv("SILO_TEST_KEEP") == "1" {
		fmt.Fprintf(os.Stderr, "pgtest: SILO_TEST_KEEP=1: kept the clusters in %s\n", fleetDir)
	} else if err := os.RemoveAll(fleetDir); err != nil {
		errs = append(errs, fmt.Errorf("remove cluster directory: %w", err))
	}
	return errors.Join(errs...)
}

// NewDatabase creates a database with a unique name on c, from t.Name() and a
// counter, and returns a superuser DSN for it. t.Cleanup drops it, forcing out
// any connection left open. It fails the test with t.Fatal if the database
// cannot be created; a failed drop is reported with t.Error. NewDatabase is
// safe for concurrent use.
func NewDatabase(t testing.TB, c *pgcluster.Cluster) string {
	t.Helper()
	name := databaseName(t.Name(), databases.Add(1))
	ident := pgx.Identifier{name}.Sanitize()
	if err := execAdmin(c, "CREATE DATABASE "+ident); err != nil {
		t.Fatalf("pgtest: create database %s: %v", ident, err)
	}
	t.Cleanup(func() {
		if err := execAdmin(c, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", ident, err)
		}
	})
	return c.DSN(name)
}

// databaseName turns a test name such as "TestMove/to_full_shard#01" into
// "testmove_to_full_shard_01_7": lower case, [a-z0-9_] only, well within the
// 63 bytes of a PostgreSQL name.
func databaseName(testName string, n int64) string {
	const maxPrefix = 40
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "_"):
			b.WriteByte('_')
		}
		if b.Len() >= maxPrefix {
			break
		}
	}
	prefix := strings.TrimSuffix(b.String(), "_")
	if prefix == "" {
		prefix = "test"
	}
	return fmt.Sprintf("%s_%d", prefix, n)
}

// execAdmin runs one statement in c's postgres database. Cleanups run after
// the test's context is cancelled, so it uses its own bounded context.
func execAdmin(c *pgcluster.Cluster, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}
