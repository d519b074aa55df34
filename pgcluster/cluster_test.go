package pgcluster_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/silo-db/silo/pgcluster"
)

// The main goroutine keeps the main thread, which Go never ends, so that
// TestSurvivesExitOfStartingThread runs on a thread that can end.
func init() { runtime.LockOSThread() }

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/silo-db/silo/pgcluster.spawnLoop"))
}

// clusterDir returns a fresh directory that the postgres user can reach when
// the tests run as root (t.TempDir's parent is 0700).
func clusterDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgcluster-test-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "cluster")
}

func start(t *testing.T, cfg pgcluster.Config) *pgcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := pgcluster.Start(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, c.Stop(ctx))
	})
	return c
}

func connect(t *testing.T, c *pgcluster.Cluster) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func show(t *testing.T, conn *pgx.Conn, setting string) string {
	t.Helper()
	var v string
	require.NoError(t, conn.QueryRow(context.Background(), "SHOW "+setting).Scan(&v))
	return v
}

func TestStartStopRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := clusterDir(t)
	var progress bytes.Buffer
	cfg := pgcluster.Config{Dir: dir, Fast: true, MaxConnections: 42, Log: &progress}

	c := start(t, cfg)
	require.True(t, c.Running())
	require.Equal(t, "127.0.0.1", c.Host())
	require.Equal(t, "silo", c.User())
	require.Equal(t, dir, c.Dir())
	require.Contains(t, progress.String(), "initdb")
	require.Equal(t, "postgres://silo:"+c.Password()+"@127.0.0.1:"+strconv.Itoa(c.Port())+"/app?sslmode=disable", c.DSN("app"))

	fi, err := os.Stat(filepath.Join(dir, "password"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	stored, err := os.ReadFile(filepath.Join(dir, "port"))
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(c.Port()), strings.TrimSpace(string(stored)))

	conn := connect(t, c)
	require.Equal(t, "logical", show(t, conn, "wal_level"))
	require.Equal(t, "42", show(t, conn, "max_connections"))
	require.Equal(t, "off", show(t, conn, "fsync"))
	num, err := strconv.Atoi(show(t, conn, "server_version_num"))
	require.NoError(t, err)
	require.Equal(t, num/10000, c.Major())
	_, err = conn.Exec(ctx, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))

	require.NoError(t, c.Stop(ctx))
	require.False(t, c.Running())
	require.NoError(t, c.Stop(ctx), "Stop is idempotent")

	progress.Reset()
	c2 := start(t, cfg)
	require.NotContains(t, progress.String(), "initdb", "the data directory is reused")
	require.Equal(t, c.Port(), c2.Port())
	require.Equal(t, c.Password(), c2.Password())
	var v string
	require.NoError(t, connect(t, c2).QueryRow(ctx, "SELECT v FROM kept").Scan(&v))
	require.Equal(t, "still here", v)

	// A server still running from the directory is stopped first.
	c3 := start(t, cfg)
	require.Eventually(t, func() bool { return !c2.Running() }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, c.Port(), c3.Port())
	require.NoError(t, connect(t, c3).QueryRow(ctx, "SELECT v FROM kept").Scan(&v))

	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = c3.Stop(ctx) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.False(t, c3.Running())
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	c := start(t, pgcluster.Config{Dir: clusterDir(t), Fast: true})
	conn := connect(t, c)

	require.NoError(t, c.Pause())
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	began := time.Now()
	_, err := conn.Exec(ctx, "SELECT 1")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(began), 5*time.Second)

	require.NoError(t, c.Resume())
	var one int
	require.NoError(t, connect(t, c).QueryRow(context.Background(), "SELECT 1").Scan(&one))
	require.Equal(t, 1, one)

	// A paused server still stops.
	require.NoError(t, c.Pause())
	stopCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, c.Stop(stopCtx))
	require.False(t, c.Running())
	require.Error(t, c.Pause())
}

func TestSettingsOverrideDefaults(t *testing.T) {
	t.Parallel()
	c := start(t, pgcluster.Config{
		Dir:      clusterDir(t),
		Fast:     true,
		Settings: map[string]string{"shared_buffers": "32MB", "application_name": "pgcluster test"},
	})
	conn := connect(t, c)
	require.Equal(t, "32MB", show(t, conn, "shared_buffers"))
	require.Equal(t, "", show(t, conn, "unix_socket_directories"))
}

func TestStartFailureShowsLog(t *testing.T) {
	t.Parallel()
	dir := clusterDir(t)
	_, err := pgcluster.Start(context.Background(), pgcluster.Config{
		Dir:      dir,
		Fast:     true,
		Settings: map[string]string{"work_mem": "plenty"},
	})
	require.ErrorContains(t, err, "exited during startup")
	require.ErrorContains(t, err, "last lines of "+filepath.Join(dir, "postgres.log"))
	require.ErrorContains(t, err, `invalid value for parameter "work_mem": "plenty"`)
	_, err = os.Stat(filepath.Join(dir, "port"))
	require.ErrorIs(t, err, os.ErrNotExist, "a port that did not work is not stored")
}

func TestPortInUse(t *testing.T) {
	t.Parallel()
	c := start(t, pgcluster.Config{Dir: clusterDir(t), Fast: true})

	_, err := pgcluster.Start(context.Background(), pgcluster.Config{Dir: clusterDir(t), Fast: true, Port: c.Port()})
	require.ErrorContains(t, err, "port "+strconv.Itoa(c.Port())+" (from Config.Port) is already in use")
	require.True(t, c.Running())
}

func TestVersionMismatch(t *testing.T) {
	t.Parallel()
	dir := clusterDir(t)
	require.NoError(t, os.Mkdir(dir, 0o755))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "data"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "data", "PG_VERSION"), []byte("9\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "password"), []byte("x\n"), 0o600))

	_, err := pgcluster.Start(context.Background(), pgcluster.Config{Dir: dir})
	require.ErrorContains(t, err, "was created by PostgreSQL 9, but the server binaries in")
	entries, err := os.ReadDir(filepath.Join(dir, "data"))
	require.NoError(t, err)
	require.Len(t, entries, 1, "the data directory is untouched")
}

func TestUnreachableDir(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("only root hands the cluster to the postgres user")
	}
	private, err := os.MkdirTemp("", "pgcluster-test-") // 0700, owned by root
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(private) })
	dir := filepath.Join(private, "x", ".silo")

	_, err = pgcluster.Start(context.Background(), pgcluster.Config{Dir: dir})

	require.EqualError(t, err, "postgres user cannot reach "+dir+": "+private+
		" has mode 0700; choose a directory under /tmp or run chmod o+x "+private)
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, cfg := range []pgcluster.Config{
		{},
		{Dir: "x", Port: -1},
		{Dir: "x", Settings: map[string]string{"port": "5432"}},
		{Dir: "x", Settings: map[string]string{"fsync=off": ""}},
		{Dir: "x", BinDir: "/nonexistent"},
	} {
		_, err := pgcluster.Start(context.Background(), cfg)
		require.Error(t, err, "%+v", cfg)
	}
	_, err := os.Stat("x")
	require.ErrorIs(t, err, os.ErrNotExist, "nothing was created")
}

func TestFindBinDir(t *testing.T) {
	const debian15 = "/usr/lib/postgresql/15/bin"
	if _, err := os.Stat(filepath.Join(debian15, "postgres")); err != nil {
		t.Skip("PostgreSQL 15 from Debian packages is not installed")
	}
	// The search, whatever the test run asked for.
	t.Setenv("SILO_PG_BINDIR", "")
	t.Setenv("SILO_PG_VERSION", "")
	dir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	require.Equal(t, debian15, dir)

	t.Setenv("SILO_PG_VERSION", "15")
	dir, err = pgcluster.FindBinDir()
	require.NoError(t, err)
	require.Equal(t, debian15, dir, "a major the machine has is used, not fetched")

	t.Setenv("SILO_PG_BINDIR", debian15)
	dir, err = pgcluster.FindBinDir()
	require.NoError(t, err)
	require.Equal(t, debian15, dir)
}

func TestFindBinDirEnvWithoutBinaries(t *testing.T) {
	empty := t.TempDir()
	t.Setenv("SILO_PG_BINDIR", empty)

	_, err := pgcluster.FindBinDir()
	require.ErrorIs(t, err, pgcluster.ErrNotFound)
	require.ErrorContains(t, err, "SILO_PG_BINDIR="+empty+" has no initdb and postgres")

	var out bytes.Buffer
	_, err = pgcluster.EnsureBinDir(context.Background(), &out)
	require.ErrorIs(t, err, pgcluster.ErrNotFound)
	require.Empty(t, out.String(), "a wrong SILO_PG_BINDIR is not fixed by installing")
}

// TestSurvivesExitOfStartingThread guards against golang/go#27505: the
// parent-death signal fires when the thread that forked postgres exits, and
// a goroutine that ends while locked to its thread takes the thread with it.
func TestSurvivesExitOfStartingThread(t *testing.T) {
	t.Parallel()
	type result struct {
		c   *pgcluster.Cluster
		err error
		tid int
	}
	dir := clusterDir(t)
	started := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, so the thread exits with us
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		c, err := pgcluster.Start(ctx, pgcluster.Config{Dir: dir, Fast: true})
		started <- result{c, err, syscall.Gettid()}
	}()
	r := <-started
	require.NoError(t, r.err)
	require.NotEqual(t, os.Getpid(), r.tid, "Start ran on the main thread, which never exits")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, r.c.Stop(ctx))
	})
	require.Never(t, func() bool { return !r.c.Running() }, time.Second, 20*time.Millisecond)
}

// TestServerDiesWithParent runs itself as a child process that starts a
// cluster and is then killed: the server must not outlive it.
func TestServerDiesWithParent(t *testing.T) {
	if dir := os.Getenv("PGCLUSTER_TEST_CHILD_DIR"); dir != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		if _, err := pgcluster.Start(ctx, pgcluster.Config{Dir: dir, Fast: true}); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		time.Sleep(2 * time.Minute) // until killed
		os.Exit(1)
	}
	t.Parallel()
	dir := clusterDir(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestServerDiesWithParent$")
	cmd.Env = append(os.Environ(), "PGCLUSTER_TEST_CHILD_DIR="+dir)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	select {
	case line := <-lines:
		require.Equal(t, "ready", line)
	case <-time.After(90 * time.Second):
		t.Fatal("child did not start its cluster")
	}
	b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	require.NoError(t, err)
	require.False(t, processGone(pid))

	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	for range lines { // drain until the pipe closes
	}
	require.Eventually(t, func() bool { return processGone(pid) }, 10*time.Second, 20*time.Millisecond)
}

// processGone reports whether pid has exited; a zombie waiting for a reaper
// that is not us counts as gone.
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) == 0 || fields[0] == "Z" || fields[0] == "X"
}

// StartAll starts what it can and names what it could not, so the caller
// can stop the rest.
func TestStartAllPartialFailure(t *testing.T) {
	t.Parallel()
	good := pgcluster.Config{Dir: clusterDir(t), Fast: true}
	bad := pgcluster.Config{Dir: filepath.Join(filepath.Dir(good.Dir), "broken"), Settings: map[string]string{"port": "1"}}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	clusters, err := pgcluster.StartAll(ctx, good, bad)
	require.Len(t, clusters, 2)
	require.NotNil(t, clusters[0])
	require.Nil(t, clusters[1])
	require.ErrorContains(t, err, "start the broken cluster")
	require.True(t, clusters[0].Running())
	require.NoError(t, clusters[0].Stop(ctx))
}

// TestStartRequestedMajor installs the major that SILO_PG_VERSION asks for
// (from npm, unless the machine has it) and starts a cluster of it.
func TestStartRequestedMajor(t *testing.T) {
	want := os.Getenv("SILO_PG_VERSION")
	if want == "" {
		t.Skip("SILO_PG_VERSION is unset: set it (e.g. 17) to install and start that major")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	binDir, err := pgcluster.EnsureBinDir(ctx, &progress)
	require.NoError(t, err, progress.String())
	t.Logf("PostgreSQL %s in %s\n%s", want, binDir, progress.String())
	again, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	require.Equal(t, binDir, again, "the install is found again, without npm")

	c := start(t, pgcluster.Config{Dir: clusterDir(t), BinDir: binDir, Fast: true})
	require.Equal(t, want, strconv.Itoa(c.Major()))
	conn := connect(t, c)
	num, err := strconv.Atoi(show(t, conn, "server_version_num"))
	require.NoError(t, err)
	require.Equal(t, c.Major(), num/10000)
	require.Equal(t, "logical", show(t, conn, "wal_level"))
	var n int
	_, err = conn.Exec(ctx, "CREATE TABLE t AS SELECT g FROM generate_series(1, 3) g")
	require.NoError(t, err)
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n))
	require.Equal(t, 3, n)
}
