package pgcluster

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Defaults for zero Config fields.
const (
	defaultUser           = "silo"
	defaultMaxConnections = 200
	defaultStartTimeout   = 60 * time.Second
)

const (
	host = "127.0.0.1"

	// Attempts at a freshly picked port, which another process may take
	// between our check and postgres binding it.
	portAttempts = 5

	initdbTimeout   = 5 * time.Minute
	versionTimeout  = 10 * time.Second
	pingTimeout     = 2 * time.Second
	pollInterval    = 100 * time.Millisecond
	killGracePeriod = 5 * time.Second
	logTailLines    = 20
)

// Config describes a cluster for Start. The zero value of each field but Dir
// means its default.
type Config struct {
	// Dir is the cluster directory, created if missing. It holds data
	// (PGDATA), postgres.log, password (0600) and port.
	Dir string

	// BinDir holds initdb and postgres. Default: FindBinDir().
	BinDir string

	// Port is the TCP port on 127.0.0.1. Zero reuses the port stored in
	// Dir/port, or picks a free one and stores it. A stored or configured port
	// that is in use makes Start fail; it is never silently changed.
	Port int

	// User is the superuser's name. Default: "silo".
	User string

	// MaxConnections is max_connections. Default: 200.
	MaxConnections int

	// Fast trades durability for speed, for tests: fsync, synchronous_commit
	// and full_page_writes are off, and initdb skips its final sync.
	Fast bool

	// Settings are extra server settings, passed as -c name=value after (and
	// so overriding) the defaults. port and listen_addresses are not allowed:
	// use Port.
	Settings map[string]string

	// StartTimeout bounds the wait for the server to accept connections.
	// Default: 60s.
	StartTimeout time.Duration

	// Log, if non-nil, gets a one-line progress message per step (initdb,
	// start), written by the goroutine calling Start. Server output always
	// goes to Dir/postgres.log.
	Log io.Writer
}

var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// withDefaults returns cfg with defaults applied and checks it.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Dir == "" {
		return cfg, errors.New("pgcluster: Config.Dir is required")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return cfg, fmt.Errorf("pgcluster: Config.Dir: %w", err)
	}
	cfg.Dir = dir
	if cfg.BinDir == "" {
		if cfg.BinDir, err = FindBinDir(); err != nil {
			return cfg, err
		}
	} else if missing := missingBinaries(cfg.BinDir); missing != "" {
		return cfg, fmt.Errorf("%w: Config.BinDir %s has no %s", ErrNotFound, cfg.BinDir, missing)
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return cfg, fmt.Errorf("pgcluster: Config.Port %d is not a TCP port", cfg.Port)
	}
	if cfg.User == "" {
		cfg.User = defaultUser
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = defaultMaxConnections
	}
	if cfg.MaxConnections < 0 {
		return cfg, fmt.Errorf("pgcluster: Config.MaxConnections %d is negative", cfg.MaxConnections)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = defaultStartTimeout
	}
	for name := range cfg.Settings {
		switch {
		case !settingName.MatchString(name):
			return cfg, fmt.Errorf("pgcluster: Config.Settings: %q is not a setting name", name)
		case name == "port" || name == "listen_addresses":
			return cfg, fmt.Errorf("pgcluster: Config.Settings: %s is managed by pgcluster; use Config.Port", name)
		}
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	return cfg, nil
}

// serverArgs returns the postgres command line for dataDir and port.
func (cfg Config) serverArgs(dataDir string, port int) []string {
	settings := map[string]string{
		"listen_addresses":                host,
		"port":                            strconv.Itoa(port),
		"unix_socket_directories":         "", // TCP only: deep temp dirs overflow a socket path
		"max_connections":                 strconv.Itoa(cfg.MaxConnections),
		"wal_level":                       "logical",
		"max_replication_slots":           "32",
		"max_wal_senders":                 "32",
		"max_worker_processes":            "16",
		"max_logical_replication_workers": "8",
		"password_encryption":             "scram-sha-256",
		"logging_collector":               "off",
		"shared_buffers":                  "64MB", // several clusters share a test machine
	}
	if cfg.Fast {
		settings["fsync"] = "off"
		settings["synchronous_commit"] = "off"
		settings["full_page_writes"] = "off"
	}
	maps.Copy(settings, cfg.Settings)
	args := []string{"-D", dataDir}
	for _, name := range slices.Sorted(maps.Keys(settings)) {
		args = append(args, "-c", name+"="+settings[name])
	}
	return args
}

// Cluster is a running PostgreSQL server started by Start. Its methods are
// safe for concurrent use.
type Cluster struct {
	dir, dataDir, logPath string
	user, password        string
	port                  int
	major                 int
	logf                  func(format string, args ...any)
	proc                  *process
}

// process is one postgres child and its exit.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the child has been reaped
}

// Start makes the cluster in cfg.Dir ready and starts it.
//
// If Dir/data has no PG_VERSION, Start runs initdb with superuser cfg.User,
// a random password (stored in Dir/password, 0600), scram-sha-256
// authentication, UTF8 and the C locale. Otherwise it reuses the data
// directory and its stored password; data from another major version is an
// error naming both versions. A server still running from Dir (named by
// Dir/data/postmaster.pid) gets a fast shutdown first, bounded by 30s.
//
// postgres runs as a direct child of this process, in its own process group,
// and gets SIGQUIT (immediate shutdown) if this process dies. As root, initdb
// and postgres run as the postgres system user, and Start first checks that
// this user can reach Dir. Start returns once a connection to the server
// succeeds; the wait is bounded by cfg.StartTimeout and ctx. A failed start
// is stopped again, and its error holds the last lines of Dir/postgres.log.
//
// ctx bounds Start only; the server runs until Stop or until this process
// exits. The errors wrap ErrNotFound when there are no binaries, and ctx.Err()
// when ctx ends the wait. Start may be called concurrently for different Dirs.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	su, err := lookupServerUser()
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		dir:     cfg.Dir,
		dataDir: filepath.Join(cfg.Dir, "data"),
		logPath: filepath.Join(cfg.Dir, "postgres.log"),
		user:    cfg.User,
		logf: func(format string, args ...any) {
			fmt.Fprintf(cfg.Log, "pgcluster: "+format+"\n", args...)
		},
	}
	if err := mkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cluster directory: %w", err)
	}
	if su != nil {
		if err := su.checkReachable(c.dir); err != nil {
			return nil, err
		}
	}
	version, err := serverVersion(ctx, cfg.BinDir)
	if err != nil {
		return nil, err
	}
	c.major = majorNumber(version)
	if err := stopStale(ctx, c.dataDir, c.logf); err != nil {
		return nil, err
	}
	if err := c.prepareData(ctx, cfg, su, version); err != nil {
		return nil, err
	}

	port, portSource, err := c.configuredPort(cfg)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		if portSource == "" {
			if port, err = freePort(); err != nil {
				return nil, err
			}
		} else if !portFree(port) {
			return nil, c.portInUse(port, portSource)
		}
		err = c.start(ctx, cfg, su, port)
		if err == nil {
			break
		}
		if !errors.Is(err, errAddrInUse) {
			return nil, err
		}
		if portSource != "" {
			return nil, fmt.Errorf("%w\n%v", c.portInUse(port, portSource), err)
		}
		if attempt == portAttempts {
			return nil, fmt.Errorf("no free port after %d attempts: %w", attempt, err)
		}
		c.logf("port %d was taken by another process; trying another", port)
	}
	c.port = port
	if err := writeFileAtomic(filepath.Join(c.dir, "port"), []byte(strconv.Itoa(port)+"\n")); err != nil {
		stopErr := c.Stop(context.WithoutCancel(ctx))
		return nil, errors.Join(fmt.Errorf("store port: %w", err), stopErr)
	}
	return c, nil
}

// prepareData runs initdb if the data directory is new, and otherwise checks
// that it can be reused.
func (c *Cluster) prepareData(ctx context.Context, cfg Config, su *serverUser, version string) error {
	b, err := os.ReadFile(filepath.Join(c.dataDir, "PG_VERSION"))
	if errors.Is(err, fs.ErrNotExist) {
		return c.initdb(ctx, cfg, su, version)
	}
	if err != nil {
		return fmt.Errorf("read data directory version: %w", err)
	}
	if dataVersion := strings.TrimSpace(string(b)); dataVersion != version {
		return fmt.Errorf("data directory %s was created by PostgreSQL %s, but the server binaries in %s are PostgreSQL %s: "+
			"run PostgreSQL %s (SILO_PG_VERSION or SILO_PG_BINDIR), or remove %s to start afresh",
			c.dataDir, dataVersion, cfg.BinDir, version, dataVersion, c.dir)
	}
	pwPath := filepath.Join(c.dir, "password")
	pw, err := os.ReadFile(pwPath)
	if err != nil {
		return fmt.Errorf("data directory %s exists but its password cannot be read (%w); remove %s to start afresh", c.dataDir, err, c.dir)
	}
	if c.password = strings.TrimSpace(string(pw)); c.password == "" {
		return fmt.Errorf("%s is empty; remove %s to start afresh", pwPath, c.dir)
	}
	if su != nil {
		if err := su.chownTree(c.dataDir); err != nil {
			return fmt.Errorf("give data directory to %s: %w", su.name, err)
		}
	}
	return nil
}

// initdb creates the data directory with a new superuser password.
func (c *Cluster) initdb(ctx context.Context, cfg Config, su *serverUser, version string) error {
	c.password = newPassword()
	if err := writeFileAtomic(filepath.Join(c.dir, "password"), []byte(c.password+"\n")); err != nil {
		return fmt.Errorf("store password: %w", err)
	}
	if err := os.MkdirAll(c.dataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	if err := os.Chmod(c.dataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	// initdb reads the password from a file, which must be readable by the
	// server user and not by others.
	pwFile, err := os.CreateTemp(c.dir, ".initdb-password-")
	if err != nil {
		return fmt.Errorf("initdb password file: %w", err)
	}
	defer os.Remove(pwFile.Name())
	_, err = pwFile.WriteString(c.password + "\n")
	if closeErr := pwFile.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return fmt.Errorf("initdb password file: %w", err)
	}
	if su != nil {
		if err := os.Chown(pwFile.Name(), su.uid, su.gid); err != nil {
			return fmt.Errorf("initdb password file: %w", err)
		}
		if err := su.chownTree(c.dataDir); err != nil {
			return fmt.Errorf("give data directory to %s: %w", su.name, err)
		}
	}

	args := []string{
		"-D", c.dataDir,
		"-U", cfg.User,
		"--pwfile=" + pwFile.Name(),
		"--auth=scram-sha-256",
		"--encoding=UTF8",
		"--locale=C",
	}
	if cfg.Fast {
		args = append(args, "--no-sync")
	}
	if compareVersions(version, "14") >= 0 {
		args = append(args, "--no-instructions")
	}
	c.logf("initdb %s (PostgreSQL %s)", c.dataDir, version)

	logFile, offset, err := c.openLog()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, initdbTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(cfg.BinDir, "initdb"), args...)
	c.prepareCommand(cmd, su, logFile, syscall.SIGKILL)
	cmd.WaitDelay = killGracePeriod
	err = spawn(cmd)
	logFile.Close()
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return fmt.Errorf("initdb %s: %w%s", c.dataDir, err, c.logTail(offset))
	}
	return nil
}

// start starts postgres on port and waits for it to accept connections. On
// failure the child is gone when start returns.
func (c *Cluster) start(ctx context.Context, cfg Config, su *serverUser, port int) error {
	logFile, offset, err := c.openLog()
	if err != nil {
		return err
	}
	c.logf("start postgres %s on %s:%d", c.dataDir, host, port)
	cmd := exec.Command(filepath.Join(cfg.BinDir, "postgres"), cfg.serverArgs(c.dataDir, port)...)
	c.prepareCommand(cmd, su, logFile, syscall.SIGQUIT)
	cmd.SysProcAttr.Setpgid = true
	err = spawn(cmd)
	logFile.Close()
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait() // the exit status of a server we stop says nothing new
		close(p.exited)
	}()

	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var lastErr error
	for {
		select {
		case <-p.exited:
			return c.earlyExit(p, offset)
		default:
		}
		if lastErr = c.ping(ctx, port); lastErr == nil {
			c.proc = p
			return nil
		}
		select {
		case <-p.exited:
			return c.earlyExit(p, offset)
		case <-ctx.Done():
			p.kill()
			return fmt.Errorf("postgres in %s did not accept connections within %s (%w; last error: %v)%s",
				c.dataDir, cfg.StartTimeout, ctx.Err(), lastErr, c.logTail(offset))
		case <-tick.C:
		}
	}
}

var errAddrInUse = errors.New("address already in use")

func (c *Cluster) earlyExit(p *process, offset int64) error {
	tail := c.logTail(offset)
	err := fmt.Errorf("postgres in %s exited during startup (%v)%s", c.dataDir, p.cmd.ProcessState, tail)
	if strings.Contains(tail, "could not bind") || strings.Contains(tail, "Address already in use") {
		err = fmt.Errorf("%w: %w", errAddrInUse, err)
	}
	return err
}

// ping connects to the server on port and checks that it serves our data
// directory, not some other server that holds the port.
func (c *Cluster) ping(ctx context.Context, port int) error {
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	connCfg, err := pgx.ParseConfig(dsn(c.user, c.password, port, "postgres"))
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, connCfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var dataDir string
	if err := conn.QueryRow(ctx, "SHOW data_directory").Scan(&dataDir); err != nil {
		return err
	}
	theirs, err := os.Stat(dataDir)
	if err != nil {
		return fmt.Errorf("port %d is served from %s: %w", port, dataDir, err)
	}
	ours, err := os.Stat(c.dataDir)
	if err != nil {
		return err
	}
	if !os.SameFile(theirs, ours) {
		return fmt.Errorf("port %d is served from %s, not %s", port, dataDir, c.dataDir)
	}
	return nil
}

// prepareCommand sets what initdb and postgres share: a clean environment,
// the cluster directory as working directory (the server user may not be
// able to search the caller's), output to the log, and the server user.
func (c *Cluster) prepareCommand(cmd *exec.Cmd, su *serverUser, logFile *os.File, deathSig syscall.Signal) {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/bin:/usr/bin:/bin"
	}
	cmd.Env = []string{"PATH=" + path, "LANG=C", "HOME=" + c.dir}
	cmd.Dir = c.dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: deathSig}
	if su != nil {
		cmd.SysProcAttr.Credential = su.credential()
	}
}

// openLog opens Dir/postgres.log for appending and returns its size, the
// offset where this run's output will start.
func (c *Cluster) openLog() (*os.File, int64, error) {
	f, err := os.OpenFile(c.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("open server log: %w", err)
	}
	offset, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("open server log: %w", err)
	}
	return f, offset, nil
}

// logTail returns "; last lines of Dir/postgres.log:" and the last lines
// written since offset, or "" if there are none.
func (c *Cluster) logTail(offset int64) string {
	const maxRead = 64 << 10
	f, err := os.Open(c.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	if offset > fi.Size() { // truncated meanwhile
		offset = 0
	}
	offset = max(offset, fi.Size()-maxRead)
	b := make([]byte, fi.Size()-offset)
	n, _ := f.ReadAt(b, offset)
	lines := strings.Split(strings.TrimRight(string(b[:n]), "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return ""
	}
	lines = lines[max(len(lines)-logTailLines, 0):]
	return fmt.Sprintf("; last lines of %s:\n\t%s", c.logPath, strings.Join(lines, "\n\t"))
}

// configuredPort returns the port to use and where it came from, or a zero
// port and "" if one must be picked.
func (c *Cluster) configuredPort(cfg Config) (int, string, error) {
	if cfg.Port != 0 {
		return cfg.Port, "Config.Port", nil
	}
	path := filepath.Join(c.dir, "port")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("read stored port: %w", err)
	}
	port, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || port <= 0 || port > 65535 {
		return 0, "", fmt.Errorf("%s holds %q, not a port; remove it to pick a new port", path, strings.TrimSpace(string(b)))
	}
	return port, path, nil
}

func (c *Cluster) portInUse(port int, source string) error {
	hint := "remove " + source + " to pick a new port"
	if source == "Config.Port" {
		hint = "choose another port, or 0 for a free one"
	}
	return fmt.Errorf("port %d (from %s) is already in use on %s: stop what listens there, or %s", port, source, host, hint)
}

// freePort asks the kernel for a free loopback port. Another process may take
// it before postgres binds it; Start retries then.
func freePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// serverVersion returns the major version of the postgres binary in binDir,
// as PG_VERSION spells it: "15", or "9.6" before version 10.
func serverVersion(ctx context.Context, binDir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("postgres --version in %s: %w", binDir, err)
	}
	v, ok := majorVersion(string(out))
	if !ok {
		return "", fmt.Errorf("postgres --version in %s: cannot read version from %q", binDir, strings.TrimSpace(string(out)))
	}
	return v, nil
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)(?:\.(\d+))?`)

// majorVersion reads the major version from `postgres --version` output such
// as "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" or
// "postgres (PostgreSQL) 17beta1".
func majorVersion(s string) (string, bool) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return "", false
	}
	if n, _ := strconv.Atoi(m[1]); n < 10 && m[2] != "" {
		return m[1] + "." + m[2], true
	}
	return m[1], true
}

// newPassword returns 128 random bits as 26 base32 characters.
func newPassword() string { return rand.Text() }

// writeFileAtomic writes a 0600 file in place of path, so that a crash leaves
// the old content or the new, never half of it.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func dsn(user, password string, port int, dbname string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     net.JoinHostPort(host, strconv.Itoa(port)),
		Path:     "/" + dbname,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port returns the server's TCP port on 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// Host returns the address the server listens on, "127.0.0.1".
func (c *Cluster) Host() string { return host }

// Major returns the server's major version, such as 15 or 17 (9 for 9.6),
// from `postgres --version`, so that callers can branch on what the server
// supports.
func (c *Cluster) Major() int { return c.major }

// User returns the superuser's name.
func (c *Cluster) User() string { return c.user }

// Password returns the superuser's password.
func (c *Cluster) Password() string { return c.password }

// Dir returns the absolute path of the cluster directory.
func (c *Cluster) Dir() string { return c.dir }

// DSN returns a URL connecting to database dbname as the superuser, such as
// postgres://silo:secret@127.0.0.1:5433/postgres?sslmode=disable.
func (c *Cluster) DSN(dbname string) string { return dsn(c.user, c.password, c.port, dbname) }

// Running reports whether the server process has not exited.
func (c *Cluster) Running() bool {
	select {
	case <-c.proc.exited:
		return false
	default:
		return true
	}
}

// Stop shuts the server down with a fast shutdown (SIGINT: open transactions
// are rolled back, then a checkpoint) and waits for it to exit. If ctx ends
// first, Stop sends SIGQUIT (immediate shutdown, crash recovery on the next
// start), then SIGKILL, and returns an error wrapping ctx.Err() although the
// server is gone. A paused server is resumed so that it can shut down.
//
// Stop is idempotent and safe for concurrent use: every call returns once the
// server has exited, nil if it was already gone.
func (c *Cluster) Stop(ctx context.Context) error {
	p := c.proc
	select {
	case <-p.exited:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	p.signal(syscall.SIGCONT)
	select {
	case <-p.exited:
		return nil
	case <-ctx.Done():
	}
	if !p.kill() {
		return fmt.Errorf("stop postgres %s: %w; it survived SIGKILL (pid %d)", c.dataDir, ctx.Err(), p.cmd.Process.Pid)
	}
	return fmt.Errorf("stop postgres %s: fast shutdown cut short (%w); the server was killed", c.dataDir, ctx.Err())
}

// Pause stops (SIGSTOP) the postmaster and every one of its children, so that
// the server accepts TCP connections but never answers: a hung server. If
// this process dies while the server is paused, the parent-death SIGQUIT
// stays pending and the server lives on, stopped, until it gets SIGCONT.
// Pause returns an error if the server is not running. It is safe for
// concurrent use.
func (c *Cluster) Pause() error {
	p := c.proc
	if !c.Running() {
		return fmt.Errorf("pause postgres %s: not running", c.dataDir)
	}
	// Stop the postmaster first so that it forks no new child meanwhile.
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("pause postgres %s: %w", c.dataDir, err)
	}
	signalAll(descendants(p.cmd.Process.Pid), syscall.SIGSTOP)
	return nil
}

// Resume continues (SIGCONT) a server stopped by Pause; on a server that is
// not paused it does nothing. It returns an error if the server is not
// running. It is safe for concurrent use.
func (c *Cluster) Resume() error {
	if !c.Running() {
		return fmt.Errorf("resume postgres %s: not running", c.dataDir)
	}
	c.proc.signal(syscall.SIGCONT)
	return nil
}

// signal sends sig to the postmaster and all its children.
func (p *process) signal(sig syscall.Signal) {
	signalAll(descendants(p.cmd.Process.Pid), sig)
	_ = p.cmd.Process.Signal(sig)
}

// kill ends the server with SIGQUIT and, if it lingers, SIGKILL. It reports
// whether the server exited.
func (p *process) kill() bool {
	for _, sig := range []syscall.Signal{syscall.SIGQUIT, syscall.SIGKILL} {
		p.signal(sig)
		p.signal(syscall.SIGCONT)
		t := time.NewTimer(killGracePeriod)
		select {
		case <-p.exited:
			t.Stop()
			return true
		case <-t.C:
		}
	}
	return false
}
