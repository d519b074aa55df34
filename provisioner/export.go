package provisioner

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

func (p *Provisioner) export(ctx context.Context, id string, w io.Writer) error {
	// Not a change, but a copy of a tenant's data leaving: the audit log
	// says who took it, how much, and whether it finished.
	cw := &countingWriter{w: w}
	err := p.dump(ctx, id, cw)
	_ = p.store.Mutate(context.WithoutCancel(ctx), "tenant.export", "tenant/"+id,
		map[string]any{"bytes": cw.n}, func(pgx.Tx) error { return err })
	return err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// dump streams pg_dump of the tenant's database to w, run as the tenant's
// own role (what a superuser's pg_dump reads is the tenant's to shape: a
// table swapped for a view between pg_dump's look and its read runs the
// view as the superuser). A suspended or deleted tenant's role may not log
// in: pg_dump connects within a login window (loginWindow).
func (p *Provisioner) dump(ctx context.Context, id string, w io.Writer) error {
	t, err := p.store.GetTenant(ctx, id)
	if err != nil {
		return err
	}
	if t.State == silo.TenantPurged {
		return silo.Errorf(silo.ENOTFOUND, "tenant %q was purged", id)
	}
	if t.State == silo.TenantProvisioning || t.State == silo.TenantMoving {
		return silo.Errorf(silo.ECONFLICT, "tenant %q is %s; export it once that is done", id, t.State)
	}
	cfg, err := p.dialer.TenantConfig(ctx, t, "")
	if err != nil {
		return err
	}
	// The password travels in the environment, never on the command line.
	cmd := exec.CommandContext(ctx, p.cfg.PgDump, "--format=custom", "--dbname="+shardmap.Conninfo(cfg))
	cmd.Env = []string{"PGPASSWORD=" + cfg.Password, "PATH=/usr/bin:/bin"}
	var stderr bytes.Buffer
	started := &firstWrite{w: w, wrote: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = started, &stderr
	if t.State == silo.TenantActive {
		if err := p.repairIfRefused(ctx, t); err != nil {
			return err
		}
	}
	var exited chan error
	start := func() error {
		if err := cmd.Start(); err != nil {
			return err
		}
		exited = make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		return nil
	}
	var werr error
	if t.State == silo.TenantActive {
		werr = start()
	} else {
		werr = p.loginWindow(ctx, t, func() error {
			if err := start(); err != nil {
				return err
			}
			// pg_dump has connected once it writes (its first bytes
			// follow its reading of the catalog), or once it has ended.
			select {
			case <-started.wrote:
			case err := <-exited:
				exited <- err
			case <-time.After(p.cfg.ConnectTimeout + 10*time.Second):
			case <-ctx.Done():
			}
			return nil
		})
	}
	if werr != nil {
		if exited != nil {
			_ = cmd.Process.Kill()
			<-exited
		}
		return p.pgDumpError(werr, "", fmt.Sprintf("export of tenant %q", id))
	}
	if err := <-exited; err != nil {
		return p.pgDumpError(err, stderr.String(), fmt.Sprintf("export of tenant %q", id))
	}
	return nil
}

// repairIfRefused checks that the tenant's role logs in, repairing its
// password once if the tenant changed it, before a client tool uses it.
func (p *Provisioner) repairIfRefused(ctx context.Context, t *silo.Tenant) error {
	conn, err := p.asTenant(ctx, t, "")
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// firstWrite passes writes on to w and closes wrote at the first one.
type firstWrite struct {
	w     io.Writer
	wrote chan struct{}
	once  sync.Once
}

func (f *firstWrite) Write(b []byte) (int, error) {
	f.once.Do(func() { close(f.wrote) })
	return f.w.Write(b)
}
