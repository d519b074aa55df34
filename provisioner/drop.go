package provisioner

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// The exported drops below remove what Silo made on a shard and lost track
// of, for `silo check --repair` (package reconcile), which first makes sure
// that nothing in the catalog names it. They run as the shard's admin and
// touch no tenant object, are idempotent (what is gone already is no
// error), and return EUNAVAILABLE when the shard cannot be reached. Names
// are quoted, and must have been validated by the caller.

// DropDatabaseAndRole drops database name, ending its sessions, and the
// role of the same name, on shard.
func (p *Provisioner) DropDatabaseAndRole(ctx context.Context, shard, name string) error {
	sc, err := p.shard(ctx, shard)
	if err != nil {
		return err
	}
	return p.dropDatabaseAndRole(ctx, sc, shard, name)
}

// DropRole drops role on shard: its privileges on databases (a move's
// subscription role has CREATE on its tenant's) are revoked and its
// sessions ended first. A role that still owns objects is not dropped, and
// PostgreSQL's refusal is returned.
func (p *Provisioner) DropRole(ctx context.Context, shard, role string) error {
	sc, err := p.shard(ctx, shard)
	if err != nil {
		return err
	}
	rows, err := sc.pool.Query(ctx, `
		SELECT DISTINCT d.datname FROM pg_catalog.pg_database d, pg_catalog.aclexplode(d.datacl) a
		WHERE a.grantee = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1)`, role)
	if err != nil {
		return shardmap.ShardError(err, shard)
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return shardmap.ShardError(err, shard)
	}
	for _, db := range dbs {
		if _, err := sc.pool.Exec(ctx, "REVOKE ALL ON DATABASE "+ident(db)+" FROM "+ident(role)); err != nil && shardmap.SQLState(err) != "3D000" {
			return shardmap.ShardError(err, shard)
		}
	}
	if _, err := sc.pool.Exec(ctx, `
		SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = $1`, role); err != nil {
		return shardmap.ShardError(err, shard)
	}
	_, err = sc.pool.Exec(ctx, "DROP ROLE IF EXISTS "+ident(role))
	return shardmap.ShardError(err, shard)
}

// DropSlot drops a replication slot on shard, ending the walsender that
// streams it if need be (a subscription left enabled). A move's cleanup and
// undo use it too.
func (p *Provisioner) DropSlot(ctx context.Context, shard, slot string) error {
	sc, err := p.shard(ctx, shard)
	if err != nil {
		return err
	}
	return p.dropSlot(ctx, sc, shard, slot)
}

// DropSubscription drops subscription sub of database db on shard, and its
// slot on the publisher when the publisher answers; when it does not, the
// slot is left there, for a check of that shard to find.
func (p *Provisioner) DropSubscription(ctx context.Context, shard, db, sub string) error {
	err := p.onAdmin(ctx, shard, db, func(c *pgx.Conn) error {
		var exists bool
		if err := c.QueryRow(ctx, `
			SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_subscription
			               WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()))`,
			sub).Scan(&exists); err != nil || !exists {
			return err
		}
		return dropSubscription(ctx, c, sub)
	})
	if shardmap.SQLState(err) == "3D000" { // the database is gone, and its subscriptions with it
		return nil
	}
	return shardmap.ShardError(err, shard)
}

// DropPublication drops publication pub of database db on shard.
func (p *Provisioner) DropPublication(ctx context.Context, shard, db, pub string) error {
	err := p.onAdmin(ctx, shard, db, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, "DROP PUBLICATION IF EXISTS "+ident(pub))
		return err
	})
	if shardmap.SQLState(err) == "3D000" {
		return nil
	}
	return shardmap.ShardError(err, shard)
}

// dropSubscription disables and drops subscription sub, on c, a session on
// its database. Dropping it drops its slot on the publisher; when the
// publisher cannot be reached, the subscription forgets its slot and is
// dropped all the same, and the slot is left for the caller to drop there.
func dropSubscription(ctx context.Context, c *pgx.Conn, sub string) error {
	if _, err := c.Exec(ctx, "ALTER SUBSCRIPTION "+ident(sub)+" DISABLE"); err != nil {
		return err
	}
	_, err := c.Exec(ctx, "DROP SUBSCRIPTION "+ident(sub))
	if err == nil {
		return nil
	}
	if _, serr := c.Exec(ctx, "ALTER SUBSCRIPTION "+ident(sub)+" SET (slot_name = NONE)"); serr != nil {
		return errors.Join(err, serr)
	}
	_, err = c.Exec(ctx, "DROP SUBSCRIPTION "+ident(sub))
	return err
}

// dropSlot drops a replication slot, ending the walsender that holds it if
// need be.
func (p *Provisioner) dropSlot(ctx context.Context, sc *ShardAdmin, shard, slot string) error {
	for range 50 {
		var active, exists bool
		err := sc.pool.QueryRow(ctx, `
			SELECT true, active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, slot).Scan(&exists, &active)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return shardmap.ShardError(err, shard)
		}
		if active {
			_, err = sc.pool.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(active_pid) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND active`, slot)
		} else {
			_, err = sc.pool.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot($1)`, slot)
			if shardmap.SQLState(err) == "42704" || err == nil { // gone meanwhile, or dropped
				return nil
			}
		}
		if err != nil && shardmap.SQLState(err) != "55006" { // object_in_use: taken again meanwhile
			return shardmap.ShardError(err, shard)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return silo.Errorf(silo.EUNAVAILABLE, "replication slot %s on shard %q stays in use", slot, shard)
}

// onAdmin runs f on an admin session on database db of a shard: only for
// DDL that runs nothing of the tenant's and for pg_catalog reads.
func (p *Provisioner) onAdmin(ctx context.Context, shard, db string, f func(*pgx.Conn) error) error {
	conn, err := p.dialer.ConnectAdmin(ctx, shard, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return f(conn)
}
