package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/silo-db/silo"
)

// serverLockClass is the first key of a server's lease: a session advisory
// lock on its River client id, held on a catalog connection of its own for
// as long as the server lives. A job River shows running on a server whose
// lease is free was left by a server that died.
const serverLockClass = 0x51_10_10

// serverGoneSQL is a SQL condition on a river_job row aliased j: the server
// that took the job's last attempt is gone (its lease is free): a job a dead
// server had fetched but not finished, which River's own rescue would run
// again only after its stuck-job timeout.
var serverGoneSQL = fmt.Sprintf(`NOT EXISTS (
	SELECT 1 FROM pg_catalog.pg_locks l
	WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
	  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
	  AND l.classid::bigint = %d
	  AND l.objid::bigint = (hashtext(j.attempted_by[cardinality(j.attempted_by)])::bigint & 4294967295))`, serverLockClass)

// newClientID names this server's River client: host, process and a random
// part, unique among the servers on one catalog.
func newClientID() string {
	host, _ := os.Hostname()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}

// takeServerLease opens the lease's connection (out of the pool, so it
// stays this server's) and takes the lock. Called at start, and by the
// sweep when the connection was lost (a catalog restart).
func (e *Engine) takeServerLease(ctx context.Context) error {
	pc, err := e.catalog.Acquire(ctx)
	if err != nil {
		return silo.WrapError(err, silo.EUNAVAILABLE, "engine: the catalog is unavailable")
	}
	conn := pc.Hijack()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1, hashtext($2))`, serverLockClass, e.id); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return silo.WrapError(err, silo.EUNAVAILABLE, "engine: take the server's lease")
	}
	e.lease = conn
	return nil
}

// keepServerLease takes the lease again if its connection was lost. Only
// the sweep's goroutine calls it after Start; e.mu guards only the field,
// never the I/O.
func (e *Engine) keepServerLease(ctx context.Context) error {
	e.mu.Lock()
	conn := e.lease
	e.mu.Unlock()
	if conn != nil && !conn.IsClosed() && conn.Ping(ctx) == nil {
		return nil
	}
	if conn != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
	}
	if e.isStopping() {
		return nil
	}
	e.log.Warn("engine: the server's lease on the catalog was lost; taking it again")
	pc, err := e.catalog.Acquire(ctx)
	if err != nil {
		return silo.WrapError(err, silo.EUNAVAILABLE, "engine: the catalog is unavailable")
	}
	fresh := pc.Hijack()
	if _, err := fresh.Exec(ctx, `SELECT pg_advisory_lock($1, hashtext($2))`, serverLockClass, e.id); err != nil {
		_ = fresh.Close(context.WithoutCancel(ctx))
		return silo.WrapError(err, silo.EUNAVAILABLE, "engine: take the server's lease")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.isStopping() {
		_ = fresh.Close(context.WithoutCancel(ctx))
		return nil
	}
	e.lease = fresh
	return nil
}
