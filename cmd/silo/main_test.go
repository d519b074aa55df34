package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// syncBuffer collects a command's output while it runs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// runSilo runs the real command tree with args and returns what it printed.
func runSilo(t *testing.T, ctx context.Context, stdin string, args ...string) (string, error) {
	t.Helper()
	var out, errOut syncBuffer
	cmd := newRootCmd(&out, &errOut)
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader(stdin))
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

// background runs a long-lived command (serve, dev) until the returned stop
// function is called; stop returns the command's error.
func background(t *testing.T, out, errOut *syncBuffer, args ...string) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := newRootCmd(out, errOut)
	cmd.SetArgs(args)
	errc := make(chan error, 1)
	go func() { errc <- cmd.ExecuteContext(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(60 * time.Second):
				err = errors.New("the command did not stop within 60s")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// devDir returns a directory the postgres user can reach when tests run as
// root (t.TempDir's parent is private to root).
func devDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "silo-dev-test-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, "silo")
}

var envRE = regexp.MustCompile(`^export SILO_URL=(\S+) SILO_TOKEN=(\S+) SILO_TENANT_MIGRATIONS='([^']+)'\n(?:export SILO_PG_ADDR=(\S+)\n)?$`)

// waitEnv waits for silo dev to write DIR/env and returns the URL and token.
func waitEnv(t *testing.T, dir string, stop func() error) (url, token string) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(filepath.Join(dir, "env")); err == nil {
			m := envRE.FindStringSubmatch(string(b))
			require.NotNil(t, m, "env file: %q", b)
			return m[1], m[2]
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("silo dev wrote no env file within 90s; it returned %v", stop())
	return "", ""
}

func TestDev(t *testing.T) {
	t.Parallel()
	dir := devDir(t)
	ctx := context.Background()
	var out, errOut syncBuffer
	start := time.Now()
	stop := background(t, &out, &errOut, "dev", "--dir", dir, "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0", "--shards", "2")
	url, token := waitEnv(t, dir, stop)
	t.Logf("silo dev ready in %v", time.Since(start))
	_ = os.Remove(filepath.Join(dir, "env")) // the second run must write it again

	resp, err := http.Get(url + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	require.Contains(t, out.String(), "Silo is running at "+url)
	require.Contains(t, out.String(), "source ")
	for _, secret := range []string{"password", "admin-token"} {
		b, err := os.ReadFile(filepath.Join(dir, "clusters", "shard-1", secret))
		if err == nil {
			require.NotContains(t, out.String()+errOut.String(), strings.TrimSpace(string(b)), "secrets stay out of the output")
		}
	}

	client := []string{"--url", url, "--token", token}
	got, err := runSilo(t, ctx, "", append([]string{"shard", "list", "-o", "json"}, client...)...)
	require.NoError(t, err)
	var shards []map[string]any
	require.NoError(t, json.Unmarshal([]byte(got), &shards), got)
	require.Len(t, shards, 2)
	for i, sh := range shards {
		require.Equal(t, []string{"shard-1", "shard-2"}[i], sh["name"])
		require.Equal(t, "active", sh["state"])
		require.Equal(t, "local", sh["region"])
		require.EqualValues(t, 100, sh["weight"])
		require.EqualValues(t, 0, sh["tenantCount"])
		require.Contains(t, sh["dsn"], ":xxxxx@")
	}

	got, err = runSilo(t, ctx, "", append([]string{"shard", "list"}, client...)...)
	require.NoError(t, err)
	require.Regexp(t, `^NAME\s+STATE\s+REGION\s+WEIGHT\s+TENANTS\s+DSN\nshard-1\s+active\s+local\s+100\s+0\s+postgres://silo:xxxxx@`, got)

	// Register shard-1's server again under another name, the DSN read from
	// standard input; then walk it through its states and remove it.
	password, err := os.ReadFile(filepath.Join(dir, "clusters", "shard-1", "password"))
	require.NoError(t, err)
	port, err := os.ReadFile(filepath.Join(dir, "clusters", "shard-1", "port"))
	require.NoError(t, err)
	dsn := "postgres://silo:" + strings.TrimSpace(string(password)) + "@127.0.0.1:" + strings.TrimSpace(string(port)) + "/postgres"
	got, err = runSilo(t, ctx, dsn+"\n", append([]string{"shard", "add", "extra", "--dsn", "-", "--region", "eu", "--weight", "7", "-o", "json"}, client...)...)
	require.NoError(t, err)
	var added api.Shard
	require.NoError(t, json.Unmarshal([]byte(got), &added))
	require.Equal(t, api.Shard{Name: "extra", Dsn: added.Dsn, Region: "eu", Weight: 7, State: "active", CreatedAt: added.CreatedAt, UpdatedAt: added.UpdatedAt}, added)
	require.NotContains(t, got, strings.TrimSpace(string(password)))
	for _, verb := range []string{"drain", "disable", "activate"} {
		_, err = runSilo(t, ctx, "", append([]string{"shard", verb, "extra"}, client...)...)
		require.NoError(t, err)
	}
	got, err = runSilo(t, ctx, "", append([]string{"shard", "get", "extra", "-o", "json"}, client...)...)
	require.NoError(t, err)
	require.Contains(t, got, `"state": "active"`)
	got, err = runSilo(t, ctx, "", append([]string{"shard", "remove", "extra"}, client...)...)
	require.NoError(t, err)
	require.Equal(t, "shard extra removed\n", got)

	// Errors are one line naming the rule and the code, and change nothing.
	_, err = runSilo(t, ctx, "", append([]string{"shard", "add", "Bad_Name", "--dsn", dsn}, client...)...)
	require.ErrorContains(t, err, "(EINVALID)")
	require.NotContains(t, err.Error(), "\n")
	_, err = runSilo(t, ctx, "", append([]string{"shard", "remove", "nope"}, client...)...)
	require.ErrorContains(t, err, `shard "nope" not found (ENOTFOUND)`)
	_, err = runSilo(t, ctx, "", "shard", "list", "--url", url, "--token", "wrong-token-0123456789")
	require.ErrorContains(t, err, "(EUNAUTHORIZED)")

	got, err = runSilo(t, ctx, "", append([]string{"audit", "-o", "json", "--action", "shard.create"}, client...)...)
	require.NoError(t, err)
	var audit []api.AuditEntry
	require.NoError(t, json.Unmarshal([]byte(got), &audit))
	require.Len(t, audit, 4) // shard-1, shard-2, extra, the refused Bad_Name
	require.Equal(t, "EINVALID", audit[0].Result)
	require.Equal(t, "silo-dev", audit[3].Actor)
	require.NotContains(t, got, strings.TrimSpace(string(password)))

	// Ctrl-C: the API and every cluster stop.
	require.NoError(t, stop())
	require.Contains(t, out.String(), "Stopped Silo and its PostgreSQL clusters.")
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = pgx.Connect(cctx, dsn)
	require.Error(t, err, "the shard cluster is stopped")

	// A second run reuses the data, the token and the registrations.
	var out2, errOut2 syncBuffer
	stop2 := background(t, &out2, &errOut2, "dev", "--dir", dir, "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0")
	url2, token2 := waitEnv(t, dir, stop2)
	require.Equal(t, token, token2)
	got, err = runSilo(t, ctx, "", "audit", "-o", "json", "--action", "shard.create", "--url", url2, "--token", token2)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal([]byte(got), &audit))
	require.Len(t, audit, 4, "no shard registered twice")
	require.NoError(t, stop2())
	require.NoError(t, os.Remove(filepath.Join(dir, "env")))

	// --reset starts over, and refuses a directory silo dev did not make.
	other := filepath.Join(filepath.Dir(dir), "precious")
	require.NoError(t, os.MkdirAll(other, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(other, "data.txt"), []byte("keep me"), 0o644))
	_, err = runSilo(t, ctx, "", "dev", "--dir", other, "--reset", "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0")
	require.ErrorContains(t, err, "refuses to delete")
	require.FileExists(t, filepath.Join(other, "data.txt"))

	var out3, errOut3 syncBuffer
	stop3 := background(t, &out3, &errOut3, "dev", "--dir", dir, "--reset", "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0", "--shards", "1")
	url3, token3 := waitEnv(t, dir, stop3)
	require.NotEqual(t, token, token3, "a reset makes a new token")
	got, err = runSilo(t, ctx, "", "shard", "list", "-o", "json", "--url", url3, "--token", token3)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal([]byte(got), &shards))
	require.Len(t, shards, 1)
	require.NoError(t, stop3())
}

func TestServe(t *testing.T) {
	fleet := pgtest.Start(t)
	catalog := pgtest.NewDatabase(t, fleet.Catalog)
	t.Setenv("SILO_ADMIN_TOKEN", "serve-test-token-0123456789")
	t.Setenv("SILO_SECRET_KEY", strings.Repeat("ab", 32))
	t.Setenv("SILO_CATALOG_DSN", catalog)
	var out, errOut syncBuffer
	stop := background(t, &out, &errOut, "serve", "--listen", "127.0.0.1:0")

	addrRE := regexp.MustCompile(`"msg":"silo serving".*"addr":"([^"]+)"`)
	var addr string
	for deadline := time.Now().Add(30 * time.Second); addr == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if m := addrRE.FindStringSubmatch(errOut.String()); m != nil {
			addr = m[1]
		}
	}
	require.NotEmpty(t, addr, "no address logged: %s", errOut.String())
	host, _, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host)

	got, err := runSilo(t, context.Background(), "", "shard", "list", "--url", "http://"+addr, "--token", "serve-test-token-0123456789")
	require.NoError(t, err)
	require.Equal(t, "NAME  STATE  REGION  WEIGHT  TENANTS  DSN\n", got)
	require.NoError(t, stop())
	require.Contains(t, errOut.String(), `"msg":"catalog ready"`)
	require.NotContains(t, errOut.String(), fleet.Catalog.Password(), "the catalog password is never logged")
}

func TestCLIErrors(t *testing.T) {
	ctx := context.Background()
	t.Setenv("SILO_TOKEN", "")
	t.Setenv("SILO_URL", "")
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"shard", "list"}, nil, "no admin token"},
		{[]string{"shard", "list", "--token", "t", "--url", "http://127.0.0.1:1"}, nil, "cannot reach the Silo API at http://127.0.0.1:1"},
		{[]string{"shard", "list", "-o", "yaml", "--token", "t"}, nil, `--output "yaml" must be table or json`},
		{[]string{"shard", "get"}, nil, "accepts 1 arg(s)"},
		{[]string{"shard", "add", "a", "--token", "t"}, nil, "--dsn is required"},
		{[]string{"shard", "list", "--token", "t"}, map[string]string{"SILO_CLIENT_TIMEOUT": "soon"}, `SILO_CLIENT_TIMEOUT="soon"`},
		{[]string{"serve"}, map[string]string{"SILO_CATALOG_DSN": ""}, "--catalog-dsn (or SILO_CATALOG_DSN) is required"},
		{[]string{"serve", "--catalog-dsn", "postgres://x@127.0.0.1:1/x", "--admin-token", "short"}, nil, "at least 16 characters"},
		{[]string{"serve", "--catalog-dsn", "postgres://x@127.0.0.1:1/x", "--log-level", "loud"}, nil, "--log-level"},
		{[]string{"serve", "--catalog-dsn", "postgres://x@127.0.0.1:1/x", "--admin-token", "0123456789abcdef"}, map[string]string{"SILO_SECRET_KEY": ""}, "--secret-key (or SILO_SECRET_KEY) is required"},
		{[]string{"serve", "--catalog-dsn", "postgres://x@127.0.0.1:1/x", "--admin-token", "0123456789abcdef", "--secret-key", "abc"}, nil, "must be 64 hex characters"},
		{[]string{"serve", "--catalog-dsn", "postgres://x@127.0.0.1:1/x", "--admin-token", "0123456789abcdef", "--secret-key", strings.Repeat("ab", 32), "--tenant-migrations", "/nonexistent"}, nil, "--tenant-migrations"},
		{[]string{"serve", "--catalog-dsn", "postgres://x@127.0.0.1:1/x", "--admin-token", "0123456789abcdef", "--secret-key", strings.Repeat("ab", 32), "--connect-timeout", "1s"}, nil, "cannot connect to the catalog"},
		{[]string{"dev", "--shards", "0"}, nil, "--shards 0 must be between 1 and 16"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := runSilo(t, ctx, "", tc.args...)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestVersion(t *testing.T) {
	got, err := runSilo(t, context.Background(), "", "version", "-o", "json")
	require.NoError(t, err)
	var v map[string]string
	require.NoError(t, json.Unmarshal([]byte(got), &v))
	require.Equal(t, version, v["version"])
}

// As root, a directory the postgres user cannot reach (a checkout under
// /root) gets its clusters under /var/tmp, linked from DIR/clusters, and
// --reset removes both.
func TestDevClusterDirUnreachable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root hands the clusters to the postgres user")
	}
	private, err := os.MkdirTemp("", "silo-private-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(private) })
	require.NoError(t, os.Chmod(private, 0o700))
	dir := filepath.Join(private, ".silo")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, devMarker), nil, 0o644))

	var out bytes.Buffer
	got, err := devClusterDir(dir, &out)
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(got) })
	require.True(t, strings.HasPrefix(got, "/var/tmp/silo-dev-"), got)
	require.Contains(t, out.String(), "cannot reach")
	link, err := os.Readlink(filepath.Join(dir, "clusters"))
	require.NoError(t, err)
	require.Equal(t, got, link)

	again, err := devClusterDir(dir, io.Discard)
	require.NoError(t, err)
	require.Equal(t, got, again, "a second run finds the same clusters")

	require.NoError(t, resetDevDir(dir))
	require.NoDirExists(t, got)
	require.NoDirExists(t, dir)
}

// The README's configuration table lists every setting's variable.
func TestReadmeListsEverySetting(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	var walk func(*cobra.Command)
	seen := 0
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.Flags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if env := f.Annotations["env"]; len(env) > 0 {
					seen++
					require.Contains(t, string(readme), "`"+env[0]+"`", "README lacks %s (--%s of %s)", env[0], f.Name, c.CommandPath())
					require.Contains(t, string(readme), "`--"+f.Name+"`", "README lacks --%s", f.Name)
				}
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd(io.Discard, io.Discard))
	require.Greater(t, seen, 10)
}

// startDevCLI starts silo dev with two shards and no wire-protocol
// endpoint in a directory of its own, and returns the directory, its stop
// function, and a client command runner against it.
func startDevCLI(t *testing.T) (dir string, stop func() error, silo func(args ...string) (string, string, error)) {
	t.Helper()
	dir = devDir(t)
	var out, errOut syncBuffer
	stop = background(t, &out, &errOut, "dev", "--dir", dir, "--listen", "127.0.0.1:0", "--pg-listen", "", "--shards", "2")
	url, token := waitEnv(t, dir, stop)
	silo = func(args ...string) (string, string, error) {
		t.Helper()
		return runSiloStderr(t, context.Background(), append(args, "--url", url, "--token", token)...)
	}
	return dir, stop, silo
}

// fromJSON decodes a command's JSON output.
func fromJSON[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal([]byte(s), &v), s)
	return v
}

// silosQuery runs SQL on a tenant through silo query and returns its table.
func silosQuery(t *testing.T, silo func(args ...string) (string, string, error), id, sql string) string {
	t.Helper()
	got, stderr, err := silo("query", id, sql)
	require.NoError(t, err, stderr)
	return got
}
