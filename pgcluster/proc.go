package pgcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	spawnOnce     sync.Once
	spawnRequests chan spawnRequest
)

// spawn starts cmd from the spawner thread, so that cmd's Pdeathsig fires only
// when the whole process exits and not when some runtime thread is retired.
func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnRequests = make(chan spawnRequest)
		go spawnLoop(spawnRequests)
	})
	req := spawnRequest{cmd: cmd, done: make(chan error, 1)}
	spawnRequests <- req
	return <-req.done
}

// spawnLoop never returns: its thread must outlive every child it forks.
func spawnLoop(reqs <-chan spawnRequest) {
	runtime.LockOSThread()
	for req := range reqs {
		req.done <- req.cmd.Start()
	}
}

// descendants returns the pids of every process below pid, read from /proc.
// PostgreSQL's children call setsid, so they are not in the postmaster's
// process group and must be found this way.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, ok := parentPID(p); ok {
			children[ppid] = append(children[ppid], p)
		}
	}
	var out []int
	seen := map[int]bool{pid: true}
	queue := []int{pid}
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		for _, c := range children[next] {
			if !seen[c] { // pids reused while /proc was read could loop
				seen[c] = true
				out = append(out, c)
				queue = append(queue, c)
			}
		}
	}
	return out
}

// parentPID reads the parent of pid from /proc/pid/stat.
func parentPID(pid int) (int, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// "pid (comm) state ppid ...", and comm may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(fields[1])
	return ppid, err == nil
}

// signalAll sends sig to every pid, ignoring processes that are already gone.
func signalAll(pids []int, sig syscall.Signal) {
	for _, p := range pids {
		_ = syscall.Kill(p, sig)
	}
}

// alive reports whether a process with this pid exists (a zombie counts).
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// stopStale stops a server left running from dataDir, as named by its
// postmaster.pid, with a fast shutdown. It waits up to 30s, bounded by ctx.
// A pid file naming a dead process or something other than postgres is left
// for postgres itself to judge and overwrite.
func stopStale(ctx context.Context, dataDir string, log func(string, ...any)) error {
	pidFile := filepath.Join(dataDir, "postmaster.pid")
	pid, err := readPIDFile(pidFile)
	if err != nil || pid <= 0 || pid == os.Getpid() || !alive(pid) || !isPostgres(pid) {
		return nil
	}
	log("stopping server left running from %s (pid %d)", dataDir, pid)
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop server left running from %s (pid %d): %w", dataDir, pid, err)
	}
	// The server might be paused by an earlier owner.
	_ = syscall.Kill(pid, syscall.SIGCONT)
	signalAll(descendants(pid), syscall.SIGCONT)

	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		// postgres removes its pid file last; a zombie left for our own
		// Wait goroutine to reap still counts as gone.
		if _, err := os.Stat(pidFile); errors.Is(err, os.ErrNotExist) || !alive(pid) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server left running from %s (pid %d) did not stop: %w", dataDir, pid, ctx.Err())
		case <-tick.C:
		}
	}
}

func readPIDFile(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, fmt.Errorf("%s is empty", path)
	}
	return strconv.Atoi(strings.TrimSpace(sc.Text()))
}

// isPostgres guards against a stale pid file whose pid now belongs to some
// other program.
func isPostgres(pid int) bool {
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
		return filepath.Base(strings.TrimSuffix(exe, " (deleted)")) == "postgres"
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	argv0, _, _ := strings.Cut(string(cmdline), "\x00")
	return filepath.Base(argv0) == "postgres"
}
