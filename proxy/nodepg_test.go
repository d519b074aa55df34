package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The node-postgres the tests run, pinned: what npm installs is what was
// tested.
var nodePgPackages = []string{"pg@8.23.1", "pg-copy-streams@7.0.0"}

// nodePg returns a directory whose node_modules holds nodePgPackages. They
// are installed with npm once per test binary into the user's cache
// (.cache/silo/node-pg/...), and reused from there by later runs.
func nodePg(t *testing.T) string {
	t.Helper()
	clientPath(t, "node")
	npm := clientPath(t, "npm")
	nodePgOnce.Do(func() { nodePgRoot, nodePgErr = installNodePg(npm) })
	if nodePgErr != nil {
		missingClient(t, "node-postgres: %v", nodePgErr)
	}
	return nodePgRoot
}

var (
	nodePgOnce sync.Once
	nodePgRoot string
	nodePgErr  error
)

func installNodePg(npm string) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	root := filepath.Join(cache, "silo", "node-pg", strings.Join(nodePgPackages, "+"))
	installed := func(dir string) bool {
		for _, p := range nodePgPackages {
			name := p[:strings.LastIndex(p, "@")]
			if _, err := os.Stat(filepath.Join(dir, "node_modules", name, "package.json")); err != nil {
				return false
			}
		}
		return true
	}
	if installed(root) {
		return root, nil
	}
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return "", err
	}
	// Installed beside, then renamed into place: a run cut short leaves no
	// half-installed cache, and of two concurrent installs the first wins.
	tmp, err := os.MkdirTemp(filepath.Dir(root), ".install-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := append([]string{"install", "--no-audit", "--no-fund", "--no-save", "--prefix", tmp}, nodePgPackages...)
	cmd := exec.CommandContext(ctx, npm, args...)
	cmd.Dir = tmp
	cmd.WaitDelay = 10 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("npm install %s: %v\n%s", strings.Join(nodePgPackages, " "), err, out)
	}
	if !installed(tmp) {
		return "", errors.New("npm install left no node-postgres in " + tmp)
	}
	if err := os.Rename(tmp, root); err != nil && !installed(root) {
		return "", err
	}
	return root, nil
}

type nodePgSession struct {
	Select                 []any   `json:"select"`
	Inserted               int     `json:"inserted"`
	AfterRollback          int     `json:"after_rollback"`
	CopyInCount            int     `json:"copy_in_rowcount"`
	CopyOutMatches         bool    `json:"copy_out_matches"`
	CopyOutBytes           int     `json:"copy_out_bytes"`
	DuplicateCode          string  `json:"duplicate_code"`
	CancelCode             string  `json:"cancel_code"`
	CancelSeconds          float64 `json:"cancel_seconds"`
	AfterCancel            int     `json:"after_cancel"`
	PidBefore              int     `json:"pid_before"`
	PidHolder              int     `json:"pid_holder"`
	PidAfter               int     `json:"pid_after"`
	WhoamiN                int     `json:"whoami_n"`
	NamedQueries           int     `json:"named_queries"`
	NamedWrong             int     `json:"named_wrong"`
	NamedServerConnections int     `json:"named_server_connections"`
}

func TestNodePg(t *testing.T) {
	t.Parallel()
	root := nodePg(t)
	node := clientPath(t, "node")
	script := testdata(t, "node_pg_client.js")
	b := setup(t, options{})
	id, token := b.tenant(t, "nodepg", "")
	other, _ := b.tenant(t, "nodepgother", "")

	var s nodePgSession
	runJSON(t, &s, 2*time.Minute, node, script, root, "session", b.dsn(id, token, id))
	require.Equal(t, []any{42.0, "it's"}, s.Select)
	require.Equal(t, 3, s.Inserted)
	require.Equal(t, 4, s.AfterRollback)
	require.Equal(t, 10000, s.CopyInCount)
	require.True(t, s.CopyOutMatches, "COPY TO gave back what COPY FROM took (%d bytes)", s.CopyOutBytes)
	require.Greater(t, s.CopyOutBytes, 64<<10)
	require.Equal(t, "23505", s.DuplicateCode)
	require.Equal(t, "57014", s.CancelCode)
	require.Less(t, s.CancelSeconds, 5.0)
	require.Equal(t, 1, s.AfterCancel)
	require.Equal(t, s.PidBefore, s.PidHolder, "the holder took the server connection node-postgres had used")
	require.NotEqual(t, s.PidBefore, s.PidAfter, "the named statement ran on another server connection")
	require.Equal(t, 2, s.WhoamiN)
	require.Equal(t, 6*40, s.NamedQueries)
	require.Zero(t, s.NamedWrong, "each client's \"calc\" is its own statement")
	require.GreaterOrEqual(t, s.NamedServerConnections, 2)
	t.Logf("%d named queries of 6 clients on %d server connections", s.NamedQueries, s.NamedServerConnections)

	for name, dsn := range map[string]string{
		"wrong key":  b.dsn(id, flip(token), id),
		"other's db": b.dsn(id, token, other),
	} {
		var r connectResult
		runJSON(t, &r, time.Minute, node, script, root, "connect", dsn)
		require.False(t, r.Connected, name)
		require.Equal(t, "28P01", r.Code, "%s: %s", name, r.Message)
	}

	// Suspended: 55000 for a client connected before, at its next
	// statement, and for a new one.
	idle := startScript(t, node, script, root, "idle", b.dsn(id, token, id))
	suspend(t, b, id)
	var r connectResult
	idle.finish(&r)
	require.False(t, r.Connected)
	require.Equal(t, "55000", r.Code, r.Message)
	require.Contains(t, r.Message, "suspended")
	r = connectResult{}
	runJSON(t, &r, time.Minute, node, script, root, "connect", b.dsn(id, token, id))
	require.False(t, r.Connected)
	require.Equal(t, "55000", r.Code, r.Message)
}
