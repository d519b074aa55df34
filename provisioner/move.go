package provisioner

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// What a tenant's move (package rebalancer) needs of the tenant lifecycle:
// the tenant's role and database on another shard, its logins, the dump of
// its schema as the tenant, and the retirement of its old database. The
// move itself, its plan and its cutover, is the rebalancer's.

// DefaultRetireAfter is how long a moved tenant's old database is kept.
const DefaultRetireAfter = 24 * time.Hour

// Run launches an operation the caller recorded (engine.Engine.Insert) and
// waits up to wait for it, returning it with its tenant as it then stands.
// A failed operation is returned with its error; ctx bounds the wait, not
// the operation.
func (p *Provisioner) Run(ctx context.Context, opID string, wait time.Duration) (Result, error) {
	return p.run(ctx, opID, wait)
}

// EnsureEmptyDatabase makes tenant t's login role on shard (its sealed
// password as a SCRAM verifier, its limits) and an empty database of the
// same name from template0, owned by the role and shut to every other
// role. It is idempotent: a role or database an earlier attempt made is
// brought to the same state. Admin only: nothing of the tenant's runs.
func (p *Provisioner) EnsureEmptyDatabase(ctx context.Context, t *silo.Tenant, shard string) error {
	if err := silo.ValidateDatabaseName(t.Database); err != nil {
		return err
	}
	sc, err := p.shard(ctx, shard)
	if err != nil {
		return err
	}
	if _, err := p.ensureRole(ctx, sc, shard, t, ""); err != nil {
		return err
	}
	// template0: the tenant's schema is to come from elsewhere, whole.
	if _, err := sc.pool.Exec(ctx, "CREATE DATABASE "+ident(t.Database)+" TEMPLATE template0"); err != nil && shardmap.SQLState(err) != "42P04" {
		return shardmap.ShardError(err, shard)
	}
	return p.handOver(ctx, sc, shard, t.Database, false)
}

// SetLogin lets role name on shard log in, or not; turning it off also
// ends the role's sessions. It holds the login lock, so no lifecycle step
// or export's login window interleaves. A role that is gone is left so.
func (p *Provisioner) SetLogin(ctx context.Context, shard, name string, on bool) error {
	if err := silo.ValidateDatabaseName(name); err != nil {
		return err
	}
	sc, err := p.shard(ctx, shard)
	if err != nil {
		return err
	}
	return p.setLogin(ctx, sc, shard, name, on)
}

// SoleSession ends every session of tenant t's role on shard, opens one of
// Silo's own as the tenant (the dialer's ConnectTenant), and leaves the
// role unable to log in, with that session its only one. It returns once
// the others are gone, so no write of theirs can commit afterwards. It
// holds the login lock meanwhile. The caller closes the session;
// SetLogin(…, true) lets the role log in again.
func (p *Provisioner) SoleSession(ctx context.Context, t *silo.Tenant, shard string) (*pgx.Conn, error) {
	name := t.Database
	if err := silo.ValidateDatabaseName(name); err != nil {
		return nil, err
	}
	sc, err := p.shard(ctx, shard)
	if err != nil {
		return nil, err
	}
	var conn *pgx.Conn
	err = p.withLoginLock(ctx, name, func() error {
		// The routers' idle sessions go first, so that Silo's own fits
		// within the tenant's connection limit.
		if err := p.setLoginLocked(ctx, sc, shard, name, true, 0); err != nil {
			return err
		}
		if _, err := sc.pool.Exec(ctx, `
			SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = $1`, name); err != nil {
			return shardmap.ShardError(err, shard)
		}
		var err error
		if conn, err = p.asTenant(ctx, t, shard); err != nil {
			return err
		}
		return p.setLoginLocked(ctx, sc, shard, name, false, conn.PgConn().PID())
	})
	if err != nil {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
		return nil, err
	}
	// pg_terminate_backend only asks: wait until the sessions are gone.
	for {
		var left int
		if err := sc.pool.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = $1 AND pid <> $2`,
			name, int64(conn.PgConn().PID())).Scan(&left); err != nil {
			conn.Close(context.WithoutCancel(ctx))
			return nil, shardmap.ShardError(err, shard)
		}
		if left == 0 {
			return conn, nil
		}
		if ctx.Err() != nil {
			conn.Close(context.WithoutCancel(ctx))
			return nil, shardmap.ShardError(ctx.Err(), shard)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// RetireDatabase renames tenant id's old database name on shard, and its
// role, to a retired name (silo_moved_…), after ending its sessions, and
// records it in the catalog to be dropped after Config.RetireAfter (by
// PurgeExpired, or at once by a purge of the tenant). A database that is
// gone already (retired by an earlier attempt) is left.
func (p *Provisioner) RetireDatabase(ctx context.Context, id, shard, name string) error {
	if err := silo.ValidateDatabaseName(name); err != nil {
		return err
	}
	sc, err := p.shard(ctx, shard)
	if err != nil {
		return err
	}
	retired := "silo_moved_" + strings.ToLower(newUUID()[:8]) + "_" + name
	if len(retired) > 63 {
		retired = retired[:63]
	}
	var exists bool
	if err := sc.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return shardmap.ShardError(err, shard)
	}
	if !exists {
		return nil
	}
	if err := p.store.RetireDatabase(ctx, shard, retired, id, time.Now().Add(p.cfg.RetireAfter)); err != nil {
		return err
	}
	for _, stmt := range []string{
		"SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE datname = " + quoteLiteral(name),
		"ALTER DATABASE " + ident(name) + " RENAME TO " + ident(retired),
		"ALTER ROLE " + ident(name) + " RENAME TO " + ident(retired),
	} {
		if _, err := sc.pool.Exec(ctx, stmt); err != nil {
			return shardmap.ShardError(err, shard)
		}
	}
	return nil
}

// DumpSchema returns tenant t's schema on shard as SQL from pg_dump
// (Config.PgDump), run as the tenant's own role, without owners,
// privileges, publications, subscriptions or psql's meta-commands.
// excludeSchemas are left out (pg_dump --exclude-schema). EINTERNAL when
// pg_dump is missing or older than the server.
func (p *Provisioner) DumpSchema(ctx context.Context, t *silo.Tenant, shard string, excludeSchemas ...string) (string, error) {
	conninfo, password, err := p.tenantClient(ctx, t, shard)
	if err != nil {
		return "", err
	}
	args := []string{"--schema-only", "--no-owner", "--no-privileges", "--no-publications", "--no-subscriptions"}
	for _, s := range excludeSchemas {
		args = append(args, "--exclude-schema="+s)
	}
	cmd := exec.CommandContext(ctx, p.cfg.PgDump, append(args, "--dbname="+conninfo)...)
	cmd.Env = []string{"PGPASSWORD=" + password, "PATH=/usr/bin:/bin"}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return "", p.pgDumpError(err, stderr.String(), fmt.Sprintf("dump the schema of tenant %q on shard %q", t.ID, shard))
	}
	var b strings.Builder
	sc := bufio.NewScanner(&out)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Text()
		// pg_dump's own psql meta-commands, and only those: a line of a
		// function body or a comment may start with a backslash too.
		if restrictLine.MatchString(line) {
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String(), sc.Err()
}

// restrictLine is the \restrict or \unrestrict line that pg_dump (since
// the August 2025 releases) writes first and last, for psql.
var restrictLine = regexp.MustCompile(`^\\(un)?restrict [A-Za-z0-9]+$`)

// tenantClient is how pg_dump reaches tenant t's database on shard as the
// tenant's own role: the connection string, and the password apart (for
// PGPASSWORD: never on a command line). A refused password is repaired
// first (the tenant may have changed it).
func (p *Provisioner) tenantClient(ctx context.Context, t *silo.Tenant, shard string) (string, string, error) {
	conn, err := p.asTenant(ctx, t, shard)
	if err != nil {
		return "", "", err
	}
	conn.Close(context.WithoutCancel(ctx))
	cfg, err := p.dialer.TenantConfig(ctx, t, shard)
	if err != nil {
		return "", "", err
	}
	return shardmap.Conninfo(cfg), cfg.Password, nil
}

// pgDumpError says what went wrong with pg_dump: missing, older than the
// server (pg_dump refuses a newer server: the PostgreSQL 16+ packages of
// the npm registry ship none), or the shard's refusal.
func (p *Provisioner) pgDumpError(err error, stderr, what string) error {
	msg := strings.Join(strings.Fields(stderr), " ")
	switch {
	case errors.Is(err, exec.ErrNotFound):
		return silo.Errorf(silo.EINTERNAL, "%s: pg_dump was not found (%s): install the PostgreSQL client tools", what, p.cfg.PgDump)
	case strings.Contains(msg, "server version mismatch"):
		return silo.Errorf(silo.EINTERNAL, "%s: %s: install a pg_dump of the shard's major version or newer (--pg-dump)", what, msg)
	}
	return silo.WrapError(err, silo.EUNAVAILABLE, "%s: %s", what, msg)
}
