package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
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
// The error wraps ErrNotFound and says what to install or set. FindBinDir is
// safe for concurrent use.
func FindBinDir() (string, error) {
	if dir := os.Getenv("SILO_PG_BINDIR"); dir != "" {
		if missing := missingBinaries(dir); missing != "" {
			return "", fmt.Errorf("%w: SILO_PG_BINDIR=%s has no %s; point it at the directory holding initdb and postgres", ErrNotFound, dir, missing)
		}
		return dir, nil
	}
	for _, dir := range candidateBinDirs() {
		if missingBinaries(dir) == "" {
			return dir, nil
		}
	}
	return "", errInstall
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

// EnsureBinDir is FindBinDir, but when nothing is found, the process is root
// and apt-get exists (Debian and Ubuntu), it installs the postgresql package
// with apt-get, copying apt's output to w (which may be nil), and looks again.
//
// A wrong $SILO_PG_BINDIR is reported, never papered over by an install.
// Otherwise the error wraps ErrNotFound and reads "PostgreSQL server binaries
// not found: install PostgreSQL (Debian/Ubuntu: apt-get install postgresql) or
// set SILO_PG_BINDIR", with the apt-get failure appended if an install failed.
// ctx bounds the install; each apt-get command is also limited to ten minutes.
// EnsureBinDir is safe for concurrent use, though concurrent installs would
// contend for apt's lock.
func EnsureBinDir(ctx context.Context, w io.Writer) (string, error) {
	dir, err := FindBinDir()
	if err == nil || os.Getenv("SILO_PG_BINDIR") != "" {
		return dir, err
	}
	apt, lookErr := exec.LookPath("apt-get")
	if os.Geteuid() != 0 || lookErr != nil {
		return "", err
	}
	if w == nil {
		w = io.Discard
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
