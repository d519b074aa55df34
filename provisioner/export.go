package provisioner

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os/exec"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
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

func (p *Provisioner) dump(ctx context.Context, id string, w io.Writer) error {
	t, err := p.store.GetTenant(ctx, id)
	if err != nil {
		return err
	}
	if t.State == silo.TenantPurged {
		return silo.Errorf(silo.ENOTFOUND, "tenant %q was purged", id)
	}
	if t.State == silo.TenantProvisioning {
		return silo.Errorf(silo.ECONFLICT, "tenant %q is still being created", id)
	}
	sc, err := p.shard(ctx, t.Shard)
	if err != nil {
		return err
	}
	// The password travels in the environment, never on the command line.
	conninfo, password, err := p.clientConninfo(sc, t.Shard, t.Database)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, p.cfg.PgDump, "--format=custom", "--dbname="+conninfo)
	cmd.Env = []string{"PGPASSWORD=" + password, "PATH=/usr/bin:/bin"}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.Join(strings.Fields(stderr.String()), " ")
		if errors.Is(err, exec.ErrNotFound) {
			return silo.Errorf(silo.EINTERNAL, "pg_dump was not found (%s): install the PostgreSQL client", p.cfg.PgDump)
		}
		return silo.WrapError(err, silo.EUNAVAILABLE, "export of tenant %q failed: %s", id, msg)
	}
	return nil
}

// quoteConninfo quotes a libpq keyword value.
func quoteConninfo(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
