package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The README's tour runs as written: every "$ " line of its examples, in
// order, in one shell, against a real `silo dev` started with make dev's
// defaults (but free ports), and each command's output must match the
// README's once what differs from run to run (ids, times, ports, sizes,
// database names) is masked. A line "..." in the README stands for any
// lines. SILO_TOUR_UPDATE=1 writes the outputs that differ back into the
// README.
func TestReadmeTour(t *testing.T) {
	if testing.Short() {
		t.Skip("the tour starts a whole silo dev")
	}
	for _, tool := range []string{"psql", "curl", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("the README tour needs %s (scripts/install-test-clients.sh installs it)", tool)
			}
			t.Skipf("the README tour needs %s", tool)
		}
	}
	readme, err := filepath.Abs("../../README.md")
	require.NoError(t, err)
	text, err := os.ReadFile(readme)
	require.NoError(t, err)
	steps := tourSteps(string(text))
	require.NotEmpty(t, steps)

	root := filepath.Dir(devDir(t)) // world-readable, for the clusters' user
	require.NoError(t, os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	out, err := exec.Command("go", "build", "-o", filepath.Join(root, "bin", "silo"), ".").CombinedOutput()
	require.NoError(t, err, "%s", out)

	// make dev: bin/silo dev with its defaults, on free ports.
	dev := exec.Command(filepath.Join(root, "bin", "silo"), "dev", "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0")
	dev.Dir = root
	var devOut syncBuffer
	dev.Stdout, dev.Stderr = &devOut, &devOut
	require.NoError(t, dev.Start())
	t.Cleanup(func() {
		_ = dev.Process.Signal(syscall.SIGINT)
		done := make(chan struct{})
		go func() { _ = dev.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = dev.Process.Kill()
		}
	})
	deadline := time.Now().Add(90 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(root, ".silo", "env")); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "silo dev wrote no .silo/env:\n%s", devOut.String())
		time.Sleep(100 * time.Millisecond)
	}

	sh := newTourShell(t, root)
	updated := string(text)
	at := 0 // in updated: where the next step's search starts
	failed := 0
	for _, st := range steps {
		if st.skip {
			continue
		}
		got := sh.run(t, st.cmd)
		i := strings.Index(updated[at:], st.raw)
		require.GreaterOrEqual(t, i, 0, "step not found: %s", st.raw)
		i += at
		at = i + len(st.raw)
		if tourMatch(st.want, got) {
			continue
		}
		failed++
		if os.Getenv("SILO_TOUR_UPDATE") != "" {
			re := st.rewrite(got)
			updated = updated[:i] + re + updated[at:]
			at = i + len(re)
			continue
		}
		t.Errorf("README tour: $ %s\n--- README says:\n%s\n--- it printed:\n%s", st.cmd, st.want, got)
	}
	if failed > 0 && os.Getenv("SILO_TOUR_UPDATE") != "" {
		require.NoError(t, os.WriteFile(readme, []byte(updated), 0o644))
		t.Logf("wrote %d outputs into README.md", failed)
	}
}

// tourStep is one "$ " command of the tour and the output the README
// shows for it.
type tourStep struct {
	cmd  string // with its continuation and here-document lines
	want string
	raw  string // the command and output lines as the README has them
	head string // the command lines as the README has them
	skip bool   // make dev: the test runs it itself
}

func (s tourStep) rewrite(got string) string {
	if got == "" {
		return s.head
	}
	return s.head + strings.TrimRight(got, "\n") + "\n"
}

// tourSteps reads the commands of the README's tour: its section's code
// blocks that are not ```sh.
func tourSteps(readme string) []tourStep {
	start := strings.Index(readme, "\n## A five-minute tour")
	if start < 0 {
		return nil
	}
	section := readme[start+1:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end+1]
	}
	var steps []tourStep
	lines := strings.SplitAfter(section, "\n")
	inBlock := false
	var cur *tourStep
	var heredoc string
	flush := func() {
		if cur != nil {
			steps = append(steps, *cur)
			cur = nil
		}
	}
	for _, l := range lines {
		trimmed := strings.TrimRight(l, "\n")
		switch {
		case !inBlock && trimmed == "```":
			inBlock = true
			continue
		case !inBlock:
			continue
		case trimmed == "```" && heredoc == "":
			flush()
			inBlock = false
			continue
		}
		switch {
		case heredoc != "":
			cur.cmd += "\n" + trimmed
			cur.raw += l
			cur.head += l
			if trimmed == heredoc {
				heredoc = ""
			}
		case cur != nil && strings.HasSuffix(cur.cmd, "\\") && cur.want == "":
			cur.cmd += "\n" + trimmed
			cur.raw += l
			cur.head += l
		case strings.HasPrefix(trimmed, "$ "):
			flush()
			cmd := strings.TrimPrefix(trimmed, "$ ")
			cur = &tourStep{cmd: cmd, raw: l, head: l, skip: cmd == "make dev"}
			if m := heredocRE.FindStringSubmatch(cmd); m != nil {
				heredoc = m[1]
			}
		case cur != nil:
			cur.want += l
			cur.raw += l
		}
	}
	flush()
	return steps
}

var auditIDRE = regexp.MustCompile(`^\d+ TIME`)

var heredocRE = regexp.MustCompile(`<<'?(\w+)'?`)

// tourMasks replace what differs from run to run.
var tourMasks = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`), "UUID"},
	{regexp.MustCompile(`\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT`), "HTTPDATE"},
	{regexp.MustCompile(`\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?`), "TIME"},
	{regexp.MustCompile(`\bt_[a-z2-7]{20}\b`), "DB"},
	{regexp.MustCompile(`silo_[A-Za-z0-9_]{20,}`), "KEY"},
	{regexp.MustCompile(`\bk_[a-z0-9]{8,}\b`), "KEYID"},
	{regexp.MustCompile(`127\.0\.0\.1:\d+`), "127.0.0.1:PORT"},
	{regexp.MustCompile(`port "?\d+"?`), "port PORT"},
	{regexp.MustCompile(`\S*/\.silo/`), ".silo/"},
	{regexp.MustCompile(`\b[0-9a-f]{24}\b`), "REQID"},
	{regexp.MustCompile(`\d+(\.\d+)? (bytes|KiB|MiB|GiB)`), "SIZE"},
	{regexp.MustCompile(`\b\d+(\.\d+)?(ms|µs|s)\b`), "DUR"},
	{regexp.MustCompile(`\b\d+ ms\b`), "N ms"},
	{regexp.MustCompile(`[ \t]+`), " "},
}

func tourMask(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		for _, m := range tourMasks {
			l = m.re.ReplaceAllString(l, m.with)
		}
		// An audit entry's id, at the head of its line.
		l = auditIDRE.ReplaceAllString(strings.TrimSpace(l), "N TIME")
		out = append(out, l)
	}
	if len(out) == 1 && out[0] == "" {
		return nil
	}
	return out
}

// tourMatch compares outputs masked; a "..." line of want matches any
// lines.
func tourMatch(want, got string) bool {
	return matchLines(tourMask(want), tourMask(got))
}

func matchLines(want, got []string) bool {
	if len(want) == 0 {
		return len(got) == 0
	}
	if want[0] == "..." {
		for i := 0; i <= len(got); i++ {
			if matchLines(want[1:], got[i:]) {
				return true
			}
		}
		return false
	}
	return len(got) > 0 && want[0] == got[0] && matchLines(want[1:], got[1:])
}

// tourShell is one bash, so that the tour's variables and `source` carry
// from one command to the next, as in a terminal.
type tourShell struct {
	in  io.WriteCloser
	out *bufio.Reader
}

const tourEnd = "__silo_tour_end__"

func newTourShell(t *testing.T, dir string) *tourShell {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "bash", "--norc", "--noprofile")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "TERM=dumb", "PAGER=cat", "PSQL_PAGER=cat", "PGCONNECT_TIMEOUT=10")
	in, err := cmd.StdinPipe()
	require.NoError(t, err)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = in.Close()
		cancel()
		_ = cmd.Wait()
		_ = pw.Close()
	})
	return &tourShell{in: in, out: bufio.NewReader(pr)}
}

// run runs one command, stderr with stdout as a terminal shows them.
func (s *tourShell) run(t *testing.T, cmd string) string {
	t.Helper()
	_, err := fmt.Fprintf(s.in, "%s\necho %s\n", cmd, tourEnd)
	require.NoError(t, err)
	var b strings.Builder
	done := make(chan error, 1)
	go func() {
		for {
			l, err := s.out.ReadString('\n')
			if err != nil {
				done <- err
				return
			}
			if strings.TrimRight(l, "\n") == tourEnd {
				done <- nil
				return
			}
			if i := strings.Index(l, tourEnd); i >= 0 { // output without a final newline
				b.WriteString(l[:i] + "\n")
				done <- nil
				return
			}
			b.WriteString(l)
		}
	}()
	select {
	case err := <-done:
		require.NoError(t, err, "$ %s", cmd)
	case <-time.After(3 * time.Minute):
		t.Fatalf("$ %s: no end within 3 minutes; so far:\n%s", cmd, b.String())
	}
	return b.String()
}
