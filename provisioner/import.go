package provisioner

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// versionTable is the tenant migrations' version table (goose's, under
// Silo's name): an archive of a tenant carries its rows.
const versionTable = "silo_schema_migrations"

// Import restores archive, a pg_dump custom-format archive of a tenant's
// database (what Export writes), into tenant id's database, as the
// tenant's own role: its objects of the same names are replaced, in one
// transaction, so a failure changes nothing. The archive's schema version
// (its version table's rows) must not be ahead of the tenant's: the
// tenant then records the archive's version, and a migration run brings
// it up to the fleet's. Only an active tenant with no operation in
// progress is imported into; an operation started meanwhile waits for the
// import. Audited as tenant.import; it is recorded as an operation of kind
// import.
//
// Errors: ENOTFOUND (unknown, deleted or purged), ECONFLICT (not active,
// or an operation in progress), EINVALID (no archive, no version table, a
// version ahead, or one that does not restore), EUNAVAILABLE (the shard).
func (p *Provisioner) Import(ctx context.Context, id string, archive io.Reader) (*silo.Tenant, error) {
	f, n, err := spool(archive)
	if err != nil {
		return nil, err
	}
	defer os.Remove(f)
	version, err := p.archiveVersion(ctx, f)
	if err != nil {
		return nil, err
	}
	params := map[string]any{"bytes": n, "schemaVersion": version}
	var imported *silo.Tenant
	err = p.store.Mutate(ctx, "tenant.import", "tenant/"+id, params, func(tx pgx.Tx) error {
		// The tenant's row, locked until the import commits or rolls
		// back: a suspend, a move's cutover or a delete waits for it. It
		// is read once locked, so the shard, state and version are those
		// the import runs against.
		if _, err := tx.Exec(ctx, `SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE`, id); err != nil {
			return shardmap.CatalogError(err, "lock tenant %q", id)
		}
		t, err := p.store.GetTenant(ctx, id)
		if err != nil {
			return err
		}
		switch t.State {
		case silo.TenantActive:
		case silo.TenantDeleted, silo.TenantPurged:
			return silo.Errorf(silo.ENOTFOUND, "tenant %q not found", id)
		default:
			return silo.Errorf(silo.ECONFLICT, "tenant %q is %s; import into an active tenant", id, t.State)
		}
		// A running operation of the tenant's, uncommitted: another one
		// cannot start before the import ends, and one in progress
		// refuses the import (ECONFLICT).
		opID := uuid.NewString()
		if _, err := p.store.InsertOperation(ctx, tx, shardmap.NewOperation{ID: opID, Kind: silo.OpImport, TenantID: id, Params: params}); err != nil {
			return err
		}
		if version > t.SchemaVersion {
			return silo.Errorf(silo.EINVALID, "the archive is at schema version %d, ahead of tenant %q's %d: migrate the fleet to it first (silo migrate up)",
				version, id, t.SchemaVersion)
		}
		if err := p.restore(ctx, t, f); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			UPDATE operations SET state = 'succeeded', finished_at = now(), updated_at = now() WHERE id = $1`, opID); err != nil {
			return shardmap.CatalogError(err, "record the import of tenant %q", id)
		}
		if version != t.SchemaVersion {
			if _, err := tx.Exec(ctx, `UPDATE tenants SET schema_version = $2, updated_at = now() WHERE id = $1`, id, version); err != nil {
				return shardmap.CatalogError(err, "record tenant %q's schema version", id)
			}
			t.SchemaVersion = version
		}
		imported = t
		return nil
	})
	if err != nil {
		return nil, err
	}
	p.log.Info("tenant imported", "tenant", id, "bytes", n, "schema_version", version)
	return p.store.GetTenant(ctx, imported.ID)
}

// spool copies an archive to a file of its own (pg_restore reads it twice:
// its version, then the rest), checking that it is one.
func spool(archive io.Reader) (string, int64, error) {
	br := bufio.NewReader(archive)
	head, _ := br.Peek(5)
	if string(head) != "PGDMP" {
		return "", 0, silo.Errorf(silo.EINVALID, "not a pg_dump custom-format archive (pg_dump --format=custom, as silo tenant export writes)")
	}
	f, err := os.CreateTemp("", "silo-import-*.dump")
	if err != nil {
		return "", 0, err
	}
	n, err := io.Copy(f, br)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return "", 0, silo.WrapError(err, silo.EINVALID, "the archive could not be read: %v", err)
	}
	return f.Name(), n, nil
}

// pgRestore is pg_restore beside the configured pg_dump, of the same
// major version.
func (p *Provisioner) pgRestore() string {
	if dir := filepath.Dir(p.cfg.PgDump); dir != "." {
		return filepath.Join(dir, "pg_restore")
	}
	return "pg_restore"
}

// archiveVersion reads the highest applied version of the archive's
// version table, from the table's data in the archive (pg_restore prints
// it as COPY text; no database is involved).
func (p *Provisioner) archiveVersion(ctx context.Context, file string) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // pg_restore is killed if the output is cut short
	cmd := exec.CommandContext(ctx, p.pgRestore(), "--data-only", "--table="+versionTable, "--file=-", file)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	stderr := &capped{max: maxToolMessage}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return 0, silo.Errorf(silo.EINTERNAL, "pg_restore was not found (%s): install the PostgreSQL client tools", p.pgRestore())
		}
		return 0, err
	}
	// The table's rows as COPY text, read within a bound: an archive may
	// hold a compressed block that expands without end.
	version, rows, in := int64(-1), false, false
	sc := bufio.NewScanner(io.LimitReader(stdout, maxVersionText))
	sc.Buffer(make([]byte, 0, 64<<10), 64<<10)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "COPY ") && strings.Contains(l, versionTable):
			in = true
		case in && l == `\.`:
			in = false
		case in:
			// id, version_id, is_applied, tstamp
			cols := strings.Split(l, "\t")
			if len(cols) < 3 {
				continue
			}
			v, err := strconv.ParseInt(cols[1], 10, 64)
			if err != nil {
				continue
			}
			rows = true
			if cols[2] == "t" && v > version {
				version = v
			}
		}
	}
	serr := sc.Err()
	cancel()
	werr := cmd.Wait()
	switch {
	case serr != nil || (werr != nil && ctx.Err() == nil && !rows):
		return 0, silo.Errorf(silo.EINVALID, "the archive does not read: %s", toolMessage(stderr.String()))
	case !rows:
		return 0, silo.Errorf(silo.EINVALID, "the archive has no %s rows: it is not an export of a Silo tenant (restore another database with pg_restore through the wire-protocol endpoint)", versionTable)
	case version < 0:
		return 0, silo.Errorf(silo.EINVALID, "the archive's %s has no applied version", versionTable)
	}
	return version, nil
}

// Bounds on what the import reads of pg_restore: the version table's text,
// and a message for the client and the audit log.
const (
	maxVersionText = 1 << 20
	maxToolMessage = 4 << 10
)

// capped keeps the first max bytes written to it.
type capped struct {
	bytes.Buffer
	max int
}

func (c *capped) Write(b []byte) (int, error) {
	if room := c.max - c.Len(); room > 0 {
		c.Buffer.Write(b[:min(len(b), room)])
	}
	return len(b), nil
}

// toolMessage is pg_restore's message on one line, without the lines that
// quote the archive or its rows ("Command was:", a COPY's row in
// "CONTEXT:", a key's values in "DETAIL:"): they would carry a tenant's
// data into the audit log.
func toolMessage(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "Command was:") || strings.HasPrefix(t, "CONTEXT:") || strings.HasPrefix(t, "DETAIL:") || strings.HasPrefix(t, "LINE ") || strings.HasPrefix(t, "^") {
			continue
		}
		keep = append(keep, t)
	}
	return oneLine(strings.Join(keep, " "))
}

// restore runs pg_restore of file into the tenant's database as the
// tenant's own role, in one transaction that a failure rolls back.
func (p *Provisioner) restore(ctx context.Context, t *silo.Tenant, file string) error {
	if err := p.repairIfRefused(ctx, t); err != nil {
		return err
	}
	cfg, err := p.dialer.TenantConfig(ctx, t, "")
	if err != nil {
		return err
	}
	// Ownership and grants are the tenant role's own; the password travels
	// in the environment, never on the command line.
	cmd := exec.CommandContext(ctx, p.pgRestore(), "--no-owner", "--no-privileges", "--clean", "--if-exists",
		"--single-transaction", "--exit-on-error", "--dbname="+shardmap.Conninfo(cfg), file)
	cmd.Env = []string{"PGPASSWORD=" + cfg.Password, "PATH=/usr/bin:/bin"}
	stderr := &capped{max: maxToolMessage}
	cmd.Stderr = stderr
	if err := cmd.Run(); err != nil {
		msg := toolMessage(stderr.String())
		if strings.Contains(msg, "could not connect") || strings.Contains(msg, "connection to server") && !strings.Contains(msg, "ERROR") {
			return silo.WrapError(err, silo.EUNAVAILABLE, "import into tenant %q: %s", t.ID, msg)
		}
		return silo.Errorf(silo.EINVALID, "the archive does not restore into tenant %q, which is unchanged: %s", t.ID, msg)
	}
	return nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
