package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// benchTarget is how to reach one bench tenant's database straight on its
// shard, as its own role.
type benchTarget struct {
	ID, Database, Password string
	Host                   string
	Port                   uint16
}

// findPgBouncer returns the pgbouncer binary: path if set, else from PATH or
// /usr/sbin (where Debian's package puts it), or "" when there is none.
func findPgBouncer(path string) string {
	if path != "" {
		return path
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer"
	}
	return ""
}

// pgBouncer is a PgBouncer in transaction pooling mode in front of every
// bench tenant's database, one [databases] entry each.
type pgBouncer struct {
	dir  string
	port int
	cmd  *exec.Cmd
	done chan error
}

// startPgBouncer writes a configuration for targets under a new temporary
// directory and starts bin on a free loopback port. Clients connect without
// a password (auth_type trust, loopback only); PgBouncer logs in to the
// shards with each tenant's password from its auth_file. poolSize is both
// default_pool_size and max_db_connections: the router's per-tenant cap.
func startPgBouncer(ctx context.Context, bin string, targets []benchTarget, poolSize int) (*pgBouncer, error) {
	dir, err := os.MkdirTemp("", "silo-bench-pgbouncer-")
	if err != nil {
		return nil, err
	}
	b := &pgBouncer{dir: dir, done: make(chan error, 1)}
	fail := func(err error) (*pgBouncer, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	b.port = l.Addr().(*net.TCPAddr).Port
	l.Close()

	var dbs, users strings.Builder
	for _, t := range targets {
		fmt.Fprintf(&dbs, "%s = host=%s port=%d dbname=%s\n", t.Database, t.Host, t.Port, t.Database)
		fmt.Fprintf(&users, "%q %q\n", t.Database, t.Password)
	}
	ini := fmt.Sprintf(`[databases]
%s
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = transaction
default_pool_size = %d
max_db_connections = %d
max_client_conn = %d
logfile = %s
pidfile = %s
ignore_startup_parameters = extra_float_digits
`, dbs.String(), b.port, filepath.Join(dir, "userlist.txt"), poolSize, poolSize,
		len(targets)*poolSize+100, filepath.Join(dir, "pgbouncer.log"), filepath.Join(dir, "pgbouncer.pid"))
	files := map[string]string{"pgbouncer.ini": ini, "userlist.txt": users.String()}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			return fail(err)
		}
	}
	args := []string{filepath.Join(dir, "pgbouncer.ini")}
	if os.Geteuid() == 0 {
		// PgBouncer will not run as root: it drops to the postgres user,
		// who must be able to read its files.
		u, err := user.Lookup("postgres")
		if err != nil {
			return fail(fmt.Errorf("pgbouncer cannot run as root and there is no postgres user: %v", err))
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, name := range []string{"", "pgbouncer.ini", "userlist.txt"} {
			if err := os.Chown(filepath.Join(dir, name), uid, gid); err != nil {
				return fail(err)
			}
		}
		args = append([]string{"-u", "postgres"}, args...)
	}
	b.cmd = exec.Command(bin, args...)
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := b.cmd.Start(); err != nil {
		return fail(err)
	}
	go func() { b.done <- b.cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)), time.Second)
		if err == nil {
			c.Close()
			return b, nil
		}
		select {
		case werr := <-b.done:
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgbouncer exited (%v): %s", werr, strings.TrimSpace(string(log)))
		case <-ctx.Done():
			b.Stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Stop()
			return nil, fmt.Errorf("pgbouncer did not listen on port %d within 10s", b.port)
		}
	}
}

// Pools opens one pgx pool per target through PgBouncer, with the simple
// protocol: PgBouncer 1.18 in transaction mode keeps no prepared statements.
func (b *pgBouncer) Pools(ctx context.Context, targets []benchTarget, maxConns int32) (map[string]*pgxpool.Pool, func(), error) {
	return openPools(ctx, targets, func(t benchTarget) (*pgxpool.Config, error) {
		cfg, err := pgxpool.ParseConfig(fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", t.Database, b.port, t.Database))
		if err != nil {
			return nil, err
		}
		cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
		cfg.MaxConns = maxConns
		return cfg, nil
	})
}

// Stop stops PgBouncer and removes its directory.
func (b *pgBouncer) Stop() {
	if b.cmd.Process != nil {
		_ = b.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-b.done:
		case <-time.After(5 * time.Second):
			_ = b.cmd.Process.Kill()
			<-b.done
		}
	}
	os.RemoveAll(b.dir)
}
