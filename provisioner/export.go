package provisioner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/internal/pgarchive"
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
//
// The archive restores with a plain pg_restore on a server that lacks the
// tenant's role: pg_dump leaves out grants (--no-privileges), and the
// archive's owners are blanked as it streams (pgarchive.DropOwners), since
// pg_dump ignores --no-owner for an archive.
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
	cmd := exec.CommandContext(ctx, p.cfg.PgDump, "--format=custom", "--no-privileges",
		"--dbname="+shardmap.Conninfo(cfg))
	cmd.Env = []string{"PGPASSWORD=" + cfg.Password, "PATH=/usr/bin:/bin"}
	if t.State == silo.TenantActive {
		if err := p.repairIfRefused(ctx, t); err != nil {
			return err
		}
	}
	var stderr bytes.Buffer
	rw := startDropOwners(w)
	started := &firstWrite{w: rw.pw, wrote: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = started, &stderr
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
	what := fmt.Sprintf("export of tenant %q", id)
	if werr != nil {
		if exited != nil {
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = rw.finish()
		return p.pgDumpError(werr, "", what)
	}
	err = <-exited
	rerr := rw.finish()
	if errors.Is(rerr, pgarchive.ErrUnsupported) {
		// pg_dump was stopped by the pipe closing: its error says nothing.
		return silo.WrapError(rerr, silo.EINTERNAL, "%s: the archive of %s cannot be rewritten without owners: %v",
			what, p.cfg.PgDump, rerr)
	}
	if err != nil {
		return p.pgDumpError(err, stderr.String(), what)
	}
	if rerr != nil {
		return silo.WrapError(rerr, silo.EUNAVAILABLE, "%s: %v", what, rerr)
	}
	return nil
}

// dropOwners runs pgarchive.DropOwners from pw to w in a goroutine of its
// own, which finish ends.
type dropOwners struct {
	pw   *io.PipeWriter
	done chan error
}

func startDropOwners(w io.Writer) *dropOwners {
	pr, pw := io.Pipe()
	d := &dropOwners{pw: pw, done: make(chan error, 1)}
	go func() {
		err := pgarchive.DropOwners(w, pr)
		// A refused archive or a failed write stops pg_dump's output.
		pr.CloseWithError(err)
		d.done <- err
	}()
	return d
}

// finish closes the pipe once pg_dump's output has all been written to it
// (cmd.Wait has returned) and returns DropOwners' error.
func (d *dropOwners) finish() error {
	_ = d.pw.Close()
	return <-d.done
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
