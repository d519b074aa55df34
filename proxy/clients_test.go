package proxy_test

// Tests with clients nobody here wrote: libpq's psql, pgbench, pg_dump and
// pg_restore, psycopg2 and node-postgres, run as programs against the
// endpoint. A missing client skips its test on a workstation and fails it
// under CI (CI=true), where scripts/install-test-clients.sh installs them.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/proxy"
)

// inCI reports whether the tests run under CI, where every client must be
// installed.
func inCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v != "" && v != "false" && v != "0"
}

// missingClient skips the test, or fails it under CI: there a client that
// is missing is a broken machine, not a choice.
func missingClient(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if inCI() {
		t.Fatalf("%s (CI is set: scripts/install-test-clients.sh installs the clients)", msg)
	}
	t.Skipf("%s; install it to run this test (scripts/install-test-clients.sh)", msg)
}

// clientPath returns the path of a client program on PATH.
func clientPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		missingClient(t, "no %s on PATH", name)
	}
	return p
}

// clientEnv is a client's environment: the test's, without the PG*
// variables that would change where or how libpq connects.
func clientEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// runClient runs a client program to its end, in dir ("" the test's own),
// with stdin as its input, within timeout.
func runClient(t *testing.T, dir string, timeout time.Duration, stdin string, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = clientEnv("PGCONNECT_TIMEOUT=10", "PYTHONDONTWRITEBYTECODE=1")
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s did not finish within %v: %w", filepath.Base(name), timeout, err)
	}
	return out.String(), errOut.String(), err
}

// suspend suspends a tenant and waits until the endpoint's router has
// heard (the catalog's NOTIFY): until then a client meets the shard's
// refusal of the tenant's role, told as 57P03 (TestShardRefusesTheTenantsRole).
func suspend(t *testing.T, b *bundle, id string) {
	t.Helper()
	_, err := b.prov.Suspend(b.ctx, id, time.Minute)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		err := b.router.WithTenant(b.ctx, id, func(*pgx.Conn) error { return nil })
		return silo.ErrorCode(err) == silo.ESUSPENDED
	}, 10*time.Second, 20*time.Millisecond)
}

// testdata returns the absolute path of a file in testdata.
func testdata(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", name))
	require.NoError(t, err)
	return p
}

func TestPsql(t *testing.T) {
	t.Parallel()
	psql := clientPath(t, "psql")
	b := setup(t, options{})
	id, token := b.tenant(t, "psql", "")
	dsn := b.dsn(id, token, id)

	out, stderr, err := runClient(t, "", 30*time.Second, "", psql, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn,
		"-c", "SELECT current_database() = current_user, 6 * 7")
	require.NoError(t, err, stderr)
	require.Equal(t, "t|42\n", out)

	// A script: transactions, \copy both ways (larger than the endpoint's
	// 64 KiB buffers), and errors shown with their SQLSTATE.
	dir := t.TempDir()
	var in strings.Builder
	for i := 100; i < 10100; i++ {
		fmt.Fprintf(&in, "%d\tname-%05d\n", i, i)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "in.tsv"), []byte(in.String()), 0o644))
	out, stderr, err = runClient(t, dir, time.Minute, "", psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn,
		"-f", testdata(t, "psql_script.sql"))
	require.NoError(t, err, stderr)
	require.Equal(t, "after rollback|2\nend|10002\n", out)
	for _, want := range []string{
		`ERROR:  23505: duplicate key value violates unique constraint "items_pkey"`,
		"ERROR:  22012: division by zero",
		`ERROR:  42703: column "nonexistent" does not exist`,
		"ERROR:  25P02: current transaction is aborted",
	} {
		require.Contains(t, stderr, want)
	}
	copied, err := os.ReadFile(filepath.Join(dir, "out.tsv"))
	require.NoError(t, err)
	require.Equal(t, "1\tone\n2\ttwo\n"+in.String(), string(copied))

	// A wrong key: libpq shows the endpoint's FATAL.
	_, stderr, err = runClient(t, "", 30*time.Second, "", psql, "-X", "-At", "-d", b.dsn(id, flip(token), id), "-c", "SELECT 1")
	require.Error(t, err)
	require.Contains(t, stderr, fmt.Sprintf("FATAL:  password authentication failed for user %q", id))
}

// SET search_path and SET TimeZone in psql follow it to another server
// connection: a second client holds the one psql used, so psql's next
// statement runs on a connection of its own.
func TestPsqlSettingsFollowTheSession(t *testing.T) {
	t.Parallel()
	psql := clientPath(t, "psql")
	b := setup(t, options{})
	id, token := b.tenant(t, "psqlset", "")
	ctx := b.ctx
	s := startPsql(t, psql, b.dsn(id, token, id))
	require.Empty(t, s.run("CREATE SCHEMA app; CREATE TABLE app.marker (x int); INSERT INTO app.marker VALUES (1), (2);"))
	require.Empty(t, s.run("SET search_path = app, public;"))
	require.Empty(t, s.run("SET TimeZone = 'Asia/Tokyo';"))
	const probe = "SELECT pg_backend_pid(), current_setting('search_path'), current_setting('TimeZone'), " +
		"(SELECT count(*) FROM marker), to_char(TIMESTAMPTZ '2024-01-01 00:00:00+00', 'HH24');"
	first := strings.Split(s.one(probe), "|")
	require.Equal(t, []string{"app, public", "Asia/Tokyo", "2", "09"}, first[1:])

	// The tenant has one server connection, the one psql just gave back:
	// the holder takes it.
	holder, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer holder.Close(ctx)
	tx, err := holder.Begin(ctx)
	require.NoError(t, err)
	var held, tz string
	require.NoError(t, tx.QueryRow(ctx, "SELECT pg_backend_pid()::text, current_setting('TimeZone')").Scan(&held, &tz))
	require.Equal(t, first[0], held, "the holder took psql's server connection")
	require.NotEqual(t, "Asia/Tokyo", tz, "psql's settings are not the holder's")

	second := strings.Split(s.one(probe), "|")
	require.NotEqual(t, first[0], second[0], "psql runs on another server connection")
	require.Equal(t, first[1:], second[1:], "with the same settings")
	require.Equal(t, "Asia/Tokyo", s.one("SHOW TimeZone;"))

	// RESET follows too: the default comes back on the next connection.
	require.Empty(t, s.run("RESET TimeZone;"))
	require.NoError(t, tx.Commit(ctx))
	tx, err = holder.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, tx.QueryRow(ctx, "SELECT pg_backend_pid()::text").Scan(&held))
	third := strings.Split(s.one(probe), "|")
	require.NotEqual(t, held, third[0])
	require.Equal(t, []string{"app, public", tz, "2"}, third[1:4])
	require.NoError(t, tx.Commit(ctx))
	s.close()
}

// psqlSession is psql run as a coprocess: statements are written to its
// input one at a time, and what it prints (errors included) is read back.
type psqlSession struct {
	t     *testing.T
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

const psqlMarker = "@@silo-done@@"

func startPsql(t *testing.T, psql, dsn string) *psqlSession {
	t.Helper()
	cmd := exec.Command(psql, "-X", "-q", "-At", "-v", "VERBOSITY=verbose", "-d", dsn)
	cmd.Env = clientEnv("PGCONNECT_TIMEOUT=10")
	in, err := cmd.StdinPipe()
	require.NoError(t, err)
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = pw, pw
	require.NoError(t, cmd.Start())
	pw.Close()
	s := &psqlSession{t: t, cmd: cmd, in: in, lines: make(chan string, 100)}
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return s
}

// run sends sql and returns the lines psql printed for it.
func (s *psqlSession) run(sql string) []string {
	s.t.Helper()
	_, err := io.WriteString(s.in, sql+"\n\\echo "+psqlMarker+"\n")
	require.NoError(s.t, err)
	var out []string
	deadline := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("psql ended; it printed %q", out)
			}
			if line == psqlMarker {
				return out
			}
			out = append(out, line)
		case <-deadline:
			s.t.Fatalf("psql did not answer %q within 30s; it printed %q", sql, out)
		}
	}
}

// one runs sql and returns the one line it printed.
func (s *psqlSession) one(sql string) string {
	s.t.Helper()
	out := s.run(sql)
	require.Len(s.t, out, 1, "%s: %q", sql, out)
	return out[0]
}

// rest returns what psql prints until it exits.
func (s *psqlSession) rest() []string {
	s.t.Helper()
	var out []string
	deadline := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				return out
			}
			out = append(out, line)
		case <-deadline:
			s.t.Fatalf("psql did not exit within 30s; it printed %q", out)
		}
	}
}

func (s *psqlSession) close() {
	s.t.Helper()
	require.NoError(s.t, s.in.Close())
	require.NoError(s.t, s.cmd.Wait())
}

// selfSignedPEM makes a certificate for 127.0.0.1 and returns it (PEM) and a
// server configuration that presents it.
func selfSignedPEM(t *testing.T) ([]byte, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "silo proxy test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		&tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
}

func TestPsqlTLS(t *testing.T) {
	t.Parallel()
	psql := clientPath(t, "psql")
	certPEM, cfg := selfSignedPEM(t)
	otherPEM, _ := selfSignedPEM(t)
	dir := t.TempDir()
	root, other := filepath.Join(dir, "root.crt"), filepath.Join(dir, "other.crt")
	require.NoError(t, os.WriteFile(root, certPEM, 0o644))
	require.NoError(t, os.WriteFile(other, otherPEM, 0o644))
	b := setup(t, options{proxy: proxy.Config{TLS: cfg}})
	id, token := b.tenant(t, "tls", "")

	for _, tc := range []struct {
		name  string
		extra []string
		ssl   bool
	}{
		{"require", []string{"sslmode", "require"}, true},
		{"verify-full", []string{"sslmode", "verify-full", "sslrootcert", root}, true},
		{"disable", []string{"sslmode", "disable"}, false},
	} {
		out, stderr, err := runClient(t, "", 30*time.Second, "", psql, "-X", "-At", "-v", "ON_ERROR_STOP=1",
			"-d", b.dsn(id, token, id, tc.extra...), "-c", `\conninfo`, "-c", "SELECT 6 * 7")
		require.NoError(t, err, "%s: %s", tc.name, stderr)
		require.Contains(t, out, "42\n", tc.name)
		if tc.ssl {
			require.Regexp(t, `SSL connection \(protocol: TLSv1\.[23]`, out, tc.name)
		} else {
			require.NotContains(t, out, "SSL connection", tc.name)
		}
	}

	// A certificate the client does not trust is refused by it.
	_, stderr, err := runClient(t, "", 30*time.Second, "", psql, "-X", "-At",
		"-d", b.dsn(id, token, id, "sslmode", "verify-full", "sslrootcert", other), "-c", "SELECT 1")
	require.Error(t, err)
	require.Contains(t, stderr, "certificate verify failed")
}

// pgbench's per-script summary: "SQL script 2: <builtin: TPC-B (sort of)>",
// then " - 1234 transactions (...)".
var pgbenchScript = regexp.MustCompile(`SQL script \d+: <builtin: ([^>]+)>\n - weight: \d+ \([^)]*\)\n - (\d+) transactions`)

func TestPgbench(t *testing.T) {
	t.Parallel()
	pgbench := clientPath(t, "pgbench")
	b := setup(t, options{})
	id, token := b.tenant(t, "bench", "")
	dsn := b.dsn(id, token, id)
	ctx := b.ctx

	out, stderr, err := runClient(t, "", time.Minute, "", pgbench, "-i", "-s", "1", "-q", dsn)
	require.NoError(t, err, stderr)
	require.Contains(t, stderr, "done in")

	tpcb := 0
	for _, mode := range []string{"simple", "extended", "prepared"} {
		// Eight clients over the tenant's four server connections. One
		// thread per client: -M prepared prepares each statement with a
		// synchronous PQprepare, and a thread blocked there waiting for a
		// connection would stall its other clients, which hold them.
		out, stderr, err = runClient(t, "", time.Minute, "", pgbench, "-n", "-M", mode, "-c", "8", "-j", "8", "-T", "2",
			"-b", "select-only@1", "-b", "tpcb-like@1", dsn)
		require.NoError(t, err, "%s: %s\n%s", mode, stderr, out)
		require.NotContains(t, stderr, "aborted", mode)
		require.Contains(t, out, "number of failed transactions: 0 (0.000%)", mode)
		m := regexp.MustCompile(`number of transactions actually processed: (\d+)\n`).FindStringSubmatch(out)
		require.NotNil(t, m, "%s: %s", mode, out)
		total, _ := strconv.Atoi(m[1])
		scripts := map[string]int{}
		for _, s := range pgbenchScript.FindAllStringSubmatch(out, -1) {
			scripts[s[1]], _ = strconv.Atoi(s[2])
		}
		require.Len(t, scripts, 2, "%s: %s", mode, out)
		require.Positive(t, scripts["select only"], mode)
		require.Positive(t, scripts["TPC-B (sort of)"], mode)
		require.Equal(t, total, scripts["select only"]+scripts["TPC-B (sort of)"], mode)
		tpcb += scripts["TPC-B (sort of)"]
		t.Logf("-M %s: %d transactions, %d of them TPC-B", mode, total, scripts["TPC-B (sort of)"])
	}

	// Each TPC-B transaction moved the same delta through an account, a
	// teller and a branch, and wrote it in the history: all or nothing.
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var accounts, tellers, branches, history, rows int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT (SELECT sum(abalance) FROM pgbench_accounts),
		(SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches),
		(SELECT coalesce(sum(delta), 0) FROM pgbench_history), (SELECT count(*) FROM pgbench_history)`).
		Scan(&accounts, &tellers, &branches, &history, &rows))
	require.Equal(t, history, accounts)
	require.Equal(t, history, tellers)
	require.Equal(t, history, branches)
	// pgbench counts what it saw committed; at most one transaction per
	// client may have committed unseen as a run ended.
	require.GreaterOrEqual(t, rows, int64(tpcb), "every TPC-B transaction pgbench counted was committed")
	require.LessOrEqual(t, rows, int64(tpcb+3*8))
}

// A psql session whose tenant is suspended is told FATAL 55000 at its
// next statement, and a new one is refused.
func TestPsqlSuspended(t *testing.T) {
	t.Parallel()
	psql := clientPath(t, "psql")
	b := setup(t, options{})
	id, token := b.tenant(t, "psqlsusp", "")
	s := startPsql(t, psql, b.dsn(id, token, id))
	require.Equal(t, "1", s.one("SELECT 1;"))
	suspend(t, b, id)
	_, err := io.WriteString(s.in, "SELECT 2;\n")
	require.NoError(t, err)
	out := s.rest()
	require.Contains(t, out, fmt.Sprintf("FATAL:  55000: tenant %q is suspended", id))
	require.Error(t, s.cmd.Wait(), "psql exits when its connection is lost")

	_, stderr, err := runClient(t, "", 30*time.Second, "", psql, "-X", "-At", "-d", b.dsn(id, token, id), "-c", "SELECT 1")
	require.Error(t, err)
	require.Contains(t, stderr, fmt.Sprintf("FATAL:  tenant %q is suspended", id))
}
