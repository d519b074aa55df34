package provisioner

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/silo-db/silo"
)

// shardConn is a small pool of admin connections to one shard.
type shardConn struct {
	dsn  string
	pool *pgxpool.Pool

	probe     sync.Mutex
	probed    bool
	superuser bool // whether the admin role is a superuser
}

// shard returns the admin pool of a shard, opening it on first use and
// reopening it when the shard's DSN changed. The first use checks that the
// shard answers; no network call happens under the map's lock, so a hung
// shard never delays the others.
func (p *Provisioner) shard(ctx context.Context, name string) (*shardConn, error) {
	dsn, err := p.store.ShardDSN(ctx, name)
	if err != nil {
		return nil, err
	}
	sc, err := p.shardPool(ctx, name, dsn)
	if err != nil {
		return nil, err
	}
	sc.probe.Lock()
	defer sc.probe.Unlock()
	if !sc.probed {
		if err := sc.pool.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&sc.superuser); err != nil {
			return nil, shardError(err, name)
		}
		sc.probed = true
	}
	return sc, nil
}

func (p *Provisioner) shardPool(ctx context.Context, name, dsn string) (*shardConn, error) {
	p.shards.Lock()
	defer p.shards.Unlock()
	if sc, ok := p.shardConn[name]; ok && sc.dsn == dsn {
		return sc, nil
	} else if ok {
		go sc.pool.Close() // Close waits for borrowed connections
		delete(p.shardConn, name)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, silo.Errorf(silo.EINTERNAL, "shard %q has an invalid DSN", name)
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.ConnectTimeout = p.cfg.ConnectTimeout
	cfg.ConnConfig.RuntimeParams["application_name"] = "silo-provisioner"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, silo.Errorf(silo.EINTERNAL, "shard %q has an invalid DSN", name)
	}
	sc := &shardConn{dsn: dsn, pool: pool}
	p.shardConn[name] = sc
	return sc, nil
}

// connectDB opens a connection to database db on a shard, as the shard's
// admin role. The caller closes it.
func (p *Provisioner) connectDB(ctx context.Context, sc *shardConn, shard, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(sc.dsn)
	if err != nil {
		return nil, silo.Errorf(silo.EINTERNAL, "shard %q has an invalid DSN", shard)
	}
	cfg.Database = db
	cfg.ConnectTimeout = p.cfg.ConnectTimeout
	cfg.RuntimeParams["application_name"] = "silo-provisioner"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, shardError(err, shard)
	}
	return conn, nil
}

// shardError gives a shard failure a code: unreachable or timed out is
// EUNAVAILABLE (try later), anything else EINTERNAL. The message names the
// shard and never the DSN.
func shardError(err error, shard string) error {
	if err == nil {
		return nil
	}
	if _, ok := errors.AsType[*silo.Error](err); ok {
		return err
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		class := pgErr.Code[:2]
		if class == "08" || class == "57" || class == "53" {
			return silo.WrapError(err, silo.EUNAVAILABLE, "shard %q is unavailable: %s", shard, pgErr.Message)
		}
		return silo.WrapError(err, silo.EINTERNAL, "shard %q: %s (SQLSTATE %s)", shard, pgErr.Message, pgErr.Code)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || pgconn.Timeout(err) {
		return silo.WrapError(err, silo.EUNAVAILABLE, "shard %q did not answer in time", shard)
	}
	msg := strings.Join(strings.Fields(err.Error()), " ")
	return silo.WrapError(err, silo.EUNAVAILABLE, "shard %q is unreachable: %s", shard, firstLine(msg))
}

func firstLine(s string) string {
	if i := strings.Index(s, "\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// sqlState returns the SQLSTATE of a PostgreSQL error, or "".
func sqlState(err error) string {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		return pgErr.Code
	}
	return ""
}

// ident quotes a name that was validated against the tenant-id grammar (or
// made by Silo) for use in DDL.
func ident(name string) string { return pgx.Identifier{name}.Sanitize() }
