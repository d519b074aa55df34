package pgcluster

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMajorVersion(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in, want string
		ok       bool
	}{
		{"postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", "15", true},
		{"postgres (PostgreSQL) 17beta1", "17", true},
		{"postgres (PostgreSQL) 9.6.24", "9.6", true},
		{"postgres (PostgreSQL) 10.1", "10", true},
		{"postgres 15", "", false},
	} {
		got, ok := majorVersion(tt.in)
		require.Equal(t, tt.ok, ok, tt.in)
		require.Equal(t, tt.want, got, tt.in)
	}
}

func TestBinDirsNewestFirst(t *testing.T) {
	t.Parallel()
	dirs := []string{"9.6", "16", "10", "9.4", "main"}
	slices.SortFunc(dirs, func(a, b string) int { return compareVersions(b, a) })
	require.Equal(t, []string{"16", "10", "9.6", "9.4", "main"}, dirs)
}

func TestServerArgsOverride(t *testing.T) {
	t.Parallel()
	cfg := Config{MaxConnections: 7, Fast: true, Settings: map[string]string{"fsync": "on", "work_mem": "8MB"}}
	args := cfg.serverArgs("/d", 5555)
	require.Equal(t, []string{"-D", "/d"}, args[:2])
	require.Contains(t, args, "fsync=on")
	require.NotContains(t, args, "fsync=off")
	for _, want := range []string{"work_mem=8MB", "port=5555", "max_connections=7", "unix_socket_directories=", "synchronous_commit=off"} {
		require.Contains(t, args, want)
	}
}

func TestCheckReachable(t *testing.T) {
	t.Parallel()
	root, err := os.MkdirTemp("", "pgcluster-test-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(root) })
	require.NoError(t, os.Chmod(root, 0o755))
	private := filepath.Join(root, "private")
	require.NoError(t, mkdirAll(private, 0o700))
	open := filepath.Join(root, "open", "deeper")
	require.NoError(t, mkdirAll(open, 0o755))

	stranger := &serverUser{name: "stranger", uid: 1 << 30, gid: 1 << 30, groups: []int{1 << 30}}
	if err := stranger.checkReachable(root); err != nil {
		t.Skipf("the temp dir is out of others' reach: %v", err)
	}
	require.NoError(t, stranger.checkReachable(open))
	require.EqualError(t, stranger.checkReachable(filepath.Join(private, "x")),
		"stranger user cannot reach "+filepath.Join(private, "x")+": "+private+
			" has mode 0700; choose a directory under /tmp or run chmod o+x "+private)

	owner := *stranger
	owner.uid = os.Geteuid()
	require.NoError(t, owner.checkReachable(private), "the owner may search its 0700 directory")
}

func TestCheckReachableExported(t *testing.T) {
	if os.Geteuid() != 0 {
		require.NoError(t, CheckReachable("/root/private/x"), "only root hands the server to another user")
		return
	}
	private, err := os.MkdirTemp("", "pgcluster-private-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(private) })
	require.NoError(t, os.Chmod(private, 0o700))
	err = CheckReachable(filepath.Join(private, "not", "made", "yet"))
	require.ErrorContains(t, err, private+" has mode 0700")

	require.NoError(t, os.Chmod(private, 0o755))
	require.NoError(t, CheckReachable(filepath.Join(private, "not", "made", "yet")))
}
