package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// psycopg2Python returns a python3 that imports psycopg2: Debian's
// (python3-psycopg2 installs into /usr/bin/python3's path) before the one on
// PATH, which may be a pyenv one without it.
func psycopg2Python(t *testing.T) string {
	t.Helper()
	candidates := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	for _, py := range candidates {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := exec.CommandContext(ctx, py, "-c", "import psycopg2").Run()
		cancel()
		if err == nil {
			return py
		}
	}
	missingClient(t, "no python3 with psycopg2 (tried %s; Debian: apt-get install python3-psycopg2)", strings.Join(candidates, ", "))
	return ""
}

// runJSON runs a client script and decodes the JSON object it prints last.
func runJSON(t *testing.T, into any, timeout time.Duration, name string, args ...string) {
	t.Helper()
	out, stderr, err := runClient(t, "", timeout, "", name, args...)
	require.NoError(t, err, "%s\n%s", stderr, out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), into), out)
}

type psycopg2Session struct {
	ServerVersion    int     `json:"server_version"`
	Select           []any   `json:"select"`
	ExecutemanyCount int     `json:"executemany_rowcount"`
	AfterRollback    int     `json:"after_rollback"`
	CopyInCount      int     `json:"copy_in_rowcount"`
	CopyOutMatches   bool    `json:"copy_out_matches"`
	CopyOutBytes     int     `json:"copy_out_bytes"`
	DuplicateCode    string  `json:"duplicate_code"`
	CancelCode       string  `json:"cancel_code"`
	CancelSeconds    float64 `json:"cancel_seconds"`
	AfterCancel      int     `json:"after_cancel"`
	PidBefore        int     `json:"pid_before"`
	PidHolder        int     `json:"pid_holder"`
	PidAfter         int     `json:"pid_after"`
	Encoding         string  `json:"encoding"`
	ConnEncoding     string  `json:"conn_encoding"`
	TimeZone         string  `json:"timezone"`
	Word             string  `json:"word"`
}

type connectResult struct {
	Connected bool    `json:"connected"`
	PgCode    *string `json:"pgcode"`
	Code      string  `json:"code"` // node-postgres
	Message   string  `json:"message"`
}

func TestPsycopg2(t *testing.T) {
	t.Parallel()
	py := psycopg2Python(t)
	script := testdata(t, "psycopg2_client.py")
	b := setup(t, options{})
	id, token := b.tenant(t, "psycopg", "")
	other, _ := b.tenant(t, "psycopgother", "")

	var s psycopg2Session
	runJSON(t, &s, 2*time.Minute, py, script, "session", b.dsn(id, token, id))
	require.Equal(t, b.fleet.Major, s.ServerVersion/10000)
	require.Equal(t, []any{42.0, "it's", `back\slash`}, s.Select)
	require.Equal(t, 3, s.ExecutemanyCount)
	require.Equal(t, 3, s.AfterRollback)
	require.Equal(t, 10000, s.CopyInCount)
	require.True(t, s.CopyOutMatches, "COPY TO gave back what COPY FROM took (%d bytes)", s.CopyOutBytes)
	require.Greater(t, s.CopyOutBytes, 64<<10)
	require.Equal(t, "23505", s.DuplicateCode)
	require.Equal(t, "57014", s.CancelCode)
	require.Less(t, s.CancelSeconds, 5.0)
	require.Equal(t, 1, s.AfterCancel)
	require.Equal(t, s.PidBefore, s.PidHolder, "the holder took the server connection psycopg2 had used")
	require.NotEqual(t, s.PidBefore, s.PidAfter, "psycopg2 ran on another server connection")
	require.Equal(t, "LATIN1", s.Encoding)
	require.Equal(t, "LATIN1", s.ConnEncoding)
	require.Equal(t, "Asia/Tokyo", s.TimeZone)
	require.Equal(t, "caf\u00e9", s.Word, "LATIN1 bytes read as LATIN1 on the new connection")

	// Refused logins. libpq keeps no SQLSTATE for a refused connection
	// (psycopg2's pgcode is None), so the message is what tells them
	// apart; TestLoginRefusals and TestNodePg check the codes.
	for name, dsn := range map[string]string{
		"wrong key":  b.dsn(id, flip(token), id),
		"other's db": b.dsn(id, token, other),
	} {
		var r connectResult
		runJSON(t, &r, time.Minute, py, script, "connect", dsn)
		require.False(t, r.Connected, name)
		require.Nil(t, r.PgCode, name)
		require.Contains(t, r.Message, `FATAL:  password authentication failed for user "`+id+`"`, name)
	}

	// Suspended: a client connected before loses its connection at its
	// next statement (the endpoint's FATAL 55000, which libpq reports as a
	// lost connection, as it does PostgreSQL's own FATALs; TestPsqlSuspended
	// shows the code), and a new one is refused.
	idle := startScript(t, py, script, "idle", b.dsn(id, token, id))
	suspend(t, b, id)
	var r connectResult
	idle.finish(&r)
	require.False(t, r.Connected, r.Message)
	require.Contains(t, r.Message, "server closed the connection")
	r = connectResult{}
	runJSON(t, &r, time.Minute, py, script, "connect", b.dsn(id, token, id))
	require.False(t, r.Connected)
	require.Nil(t, r.PgCode)
	require.Contains(t, r.Message, `FATAL:  tenant "`+id+`" is suspended`)
}

// script is a client script that connected and waits for a line on its
// input before its next statement.
type script struct {
	t      *testing.T
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Reader
	stderr strings.Builder
}

// startScript runs a client script and waits until it prints "connected".
func startScript(t *testing.T, name string, args ...string) *script {
	t.Helper()
	s := &script{t: t, cmd: exec.Command(name, args...)}
	s.cmd.Env = clientEnv("PGCONNECT_TIMEOUT=10", "PYTHONDONTWRITEBYTECODE=1")
	s.cmd.Stderr = &s.stderr
	var err error
	s.in, err = s.cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := s.cmd.StdoutPipe()
	require.NoError(t, err)
	s.out = bufio.NewReader(stdout)
	require.NoError(t, s.cmd.Start())
	timer := time.AfterFunc(time.Minute, func() { _ = s.cmd.Process.Kill() })
	t.Cleanup(func() {
		timer.Stop()
		_ = s.cmd.Process.Kill()
	})
	line, err := s.out.ReadString('\n')
	require.NoError(t, err, s.stderr.String())
	require.Equal(t, "connected\n", line)
	return s
}

// finish lets the script go on, and decodes the JSON object it prints.
func (s *script) finish(into any) {
	s.t.Helper()
	_, err := io.WriteString(s.in, "go\n")
	require.NoError(s.t, err)
	out, err := io.ReadAll(s.out)
	require.NoError(s.t, err)
	require.NoError(s.t, s.cmd.Wait(), "%s\n%s", s.stderr.String(), out)
	require.NoError(s.t, json.Unmarshal(out, into), string(out))
}
