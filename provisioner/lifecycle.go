package provisioner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/shardmap"
)

// allowed lists, per operation kind, the tenant states it may start from.
var allowed = map[silo.OperationKind][]silo.TenantState{
	silo.OpSuspend: {silo.TenantActive, silo.TenantSuspended},
	silo.OpResume:  {silo.TenantActive, silo.TenantSuspended},
	silo.OpDelete:  {silo.TenantActive, silo.TenantSuspended},
	silo.OpPurge:   {silo.TenantActive, silo.TenantSuspended, silo.TenantDeleted, silo.TenantProvisioning},
}

func (p *Provisioner) lifecycle(ctx context.Context, id string, kind silo.OperationKind, wait time.Duration) (Result, error) {
	t, err := p.store.GetTenant(ctx, id)
	if err != nil {
		return Result{}, err
	}
	if t.State == silo.TenantPurged {
		return Result{}, silo.Errorf(silo.ENOTFOUND, "tenant %q was purged", id)
	}
	ok := false
	for _, s := range allowed[kind] {
		ok = ok || s == t.State
	}
	if !ok {
		if t.State == silo.TenantDeleted {
			return Result{}, silo.Errorf(silo.ECONFLICT, "tenant %q is deleted (purged after %s); only a purge applies", id, t.PurgeAfter.Format(time.RFC3339))
		}
		return Result{}, silo.Errorf(silo.ECONFLICT, "tenant %q is %s; it cannot be %s", id, t.State, pastTense[kind])
	}
	opID := newUUID()
	params := map[string]any{"operation": opID, "priorState": string(t.State)}
	err = p.store.Mutate(ctx, "tenant."+string(kind), "tenant/"+id, params, func(tx pgx.Tx) error {
		return p.eng.Insert(ctx, tx, shardmap.NewOperation{ID: opID, Kind: kind, TenantID: id, Params: params})
	})
	if err != nil {
		return Result{}, err
	}
	return p.run(ctx, opID, wait)
}

var pastTense = map[silo.OperationKind]string{
	silo.OpSuspend: "suspended", silo.OpResume: "resumed", silo.OpDelete: "deleted", silo.OpPurge: "purged",
}

// plan returns how to carry out a suspend, resume, delete or purge. The
// catalog's new state is the pivot of each: once it is recorded, the role's
// login is never set back. A purge has no undo: it only goes forward.
func (p *Provisioner) plan(op *silo.Operation, params map[string]any) (engine.Plan, error) {
	id := op.TenantID
	var sc *ShardAdmin
	var shard, name string // the tenant's shard, and its database and role
	load := func(ctx context.Context) error {
		if sc != nil {
			return nil
		}
		t, err := p.store.GetTenant(ctx, id)
		if err != nil {
			return err
		}
		if err := silo.ValidateDatabaseName(t.Database); err != nil {
			return err
		}
		shard, name = t.Shard, t.Database
		sc, err = p.shard(ctx, shard)
		return err
	}
	login := func(on bool) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			if err := load(ctx); err != nil {
				return err
			}
			return p.setLogin(ctx, sc, shard, name, on)
		}
	}
	mark := func(state silo.TenantState) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			t, err := p.store.GetTenant(ctx, id)
			if err != nil {
				return err
			}
			if t.State == state {
				return nil
			}
			t.State = state
			switch state {
			case silo.TenantDeleted:
				now := time.Now().UTC()
				purge := now.Add(p.cfg.GracePeriod)
				t.DeletedAt, t.PurgeAfter = &now, &purge
			case silo.TenantPurged:
				if t.DeletedAt == nil {
					now := time.Now().UTC()
					t.DeletedAt = &now
				}
				t.PurgeAfter = nil
			}
			return pgx.BeginFunc(ctx, p.catalog, func(tx pgx.Tx) error {
				if _, err := p.store.UpdateTenantTx(ctx, tx, *t); err != nil {
					return err
				}
				if state == silo.TenantPurged {
					return nil // no undo, so no pivot
				}
				return engine.MarkPivot(ctx, tx)
			})
		}
	}
	// Undo restores the role's login as it was before the operation.
	restore := []engine.Step{{Name: "undo:restore-login", Run: login(params["priorState"] == string(silo.TenantActive))}}
	switch op.Kind {
	case silo.OpSuspend:
		return engine.Plan{Steps: []engine.Step{
			{Name: "disable-login", Run: login(false)},
			{Name: "mark-suspended", Run: mark(silo.TenantSuspended)},
		}, Undo: restore, Pivot: "mark-suspended"}, nil
	case silo.OpResume:
		return engine.Plan{Steps: []engine.Step{
			{Name: "enable-login", Run: login(true)},
			// Migration runs pass suspended tenants by (Silo reaches a
			// tenant's objects only as its own role, which cannot log in
			// while suspended): a resumed tenant is brought to the target
			// before it serves again.
			{Name: "migrate", Run: func(ctx context.Context) error { return p.bringCurrent(ctx, id) }},
			{Name: "mark-active", Run: mark(silo.TenantActive)},
		}, Undo: restore, Pivot: "mark-active"}, nil
	case silo.OpDelete:
		return engine.Plan{Steps: []engine.Step{
			{Name: "disable-login", Run: login(false)},
			{Name: "mark-deleted", Run: mark(silo.TenantDeleted)},
		}, Undo: restore, Pivot: "mark-deleted"}, nil
	case silo.OpPurge:
		// No undo: a purge goes forward until it is done.
		return engine.Plan{Steps: []engine.Step{
			{Name: "disable-login", Run: login(false)},
			{Name: "drop-database", Run: func(ctx context.Context) error {
				if err := load(ctx); err != nil {
					return err
				}
				_, err := sc.pool.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)")
				return shardmap.ShardError(err, shard)
			}},
			{Name: "drop-retired-copies", Run: func(ctx context.Context) error { return p.dropRetiredCopies(ctx, op) }},
			{Name: "drop-role", Run: func(ctx context.Context) error {
				if err := load(ctx); err != nil {
					return err
				}
				_, err := sc.pool.Exec(ctx, "DROP ROLE IF EXISTS "+ident(name))
				return shardmap.ShardError(err, shard)
			}},
			{Name: "mark-purged", Run: mark(silo.TenantPurged)},
		}}, nil
	}
	return engine.Plan{}, fmt.Errorf("unknown operation kind %q", op.Kind)
}

// loginLockClass is the first key of the catalog advisory lock held while
// a tenant role's LOGIN changes: a lifecycle step and an export's login
// window (loginWindow) never interleave.
const loginLockClass = 0x51_10_0E

// setLogin lets the tenant's role log in, or not; turning it off also ends
// the role's sessions, so the data is unreachable when this returns.
func (p *Provisioner) setLogin(ctx context.Context, sc *ShardAdmin, shard, name string, on bool) error {
	return p.withLoginLock(ctx, name, func() error {
		return p.setLoginLocked(ctx, sc, shard, name, on, 0)
	})
}

// setLoginLocked is setLogin under the login lock; keep is a backend
// (one of Silo's own sessions as the tenant) that is not ended.
func (p *Provisioner) setLoginLocked(ctx context.Context, sc *ShardAdmin, shard, name string, on bool, keep uint32) error {
	attr := "NOLOGIN"
	if on {
		attr = "LOGIN"
	}
	_, err := sc.pool.Exec(ctx, "ALTER ROLE "+ident(name)+" "+attr)
	if shardmap.SQLState(err) == "42704" { // undefined_object: already purged
		return nil
	}
	if err != nil {
		return shardmap.ShardError(err, shard)
	}
	if !on {
		_, err = sc.pool.Exec(ctx, `
			SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
			WHERE usename = $1 AND pid <> $2`, name, int64(keep))
	}
	return shardmap.ShardError(err, shard)
}

// withLoginLock runs fn holding the catalog lock on the role's LOGIN.
func (p *Provisioner) withLoginLock(ctx context.Context, name string, fn func() error) error {
	conn, err := p.catalog.Acquire(ctx)
	if err != nil {
		return silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable")
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1, hashtext($2))`, loginLockClass, name); err != nil {
		conn.Conn().Close(context.WithoutCancel(ctx)) // a lock taken as the wait ended dies with it
		return silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable")
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1, hashtext($2))`, loginLockClass, name)
	}()
	return fn()
}

// loginWindow runs open, which must open one session as the tenant and
// return once it has, while the tenant's role may log in: a suspended or
// deleted tenant's role may not, and its data is reached only as its own
// role (export). The role's LOGIN is set back as soon as open returns; the
// session it opened lives on. The login lock keeps a lifecycle step from
// changing LOGIN meanwhile, and a router serves no tenant that is not
// active, so the tenant itself cannot use the moment.
func (p *Provisioner) loginWindow(ctx context.Context, t *silo.Tenant, open func() error) error {
	sc, err := p.shard(ctx, t.Shard)
	if err != nil {
		return err
	}
	return p.withLoginLock(ctx, t.Database, func() error {
		var canLogin bool
		if err := sc.pool.QueryRow(ctx, `SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = $1`, t.Database).Scan(&canLogin); err != nil {
			return shardmap.ShardError(err, t.Shard)
		}
		if canLogin {
			return open()
		}
		if _, err := sc.pool.Exec(ctx, "ALTER ROLE "+ident(t.Database)+" LOGIN"); err != nil {
			return shardmap.ShardError(err, t.Shard)
		}
		oerr := open()
		if _, err := sc.pool.Exec(context.WithoutCancel(ctx), "ALTER ROLE "+ident(t.Database)+" NOLOGIN"); err != nil {
			return errors.Join(oerr, shardmap.ShardError(err, t.Shard))
		}
		return oerr
	})
}

// bringCurrent migrates a tenant's database to the fleet's target version
// when its catalog row says it is elsewhere, as the tenant's own role.
func (p *Provisioner) bringCurrent(ctx context.Context, id string) error {
	t, err := p.store.GetTenant(ctx, id)
	if err != nil {
		return err
	}
	target, err := p.targetVersion(ctx)
	if err != nil || t.SchemaVersion == target {
		return err
	}
	v, err := p.migrateTenant(ctx, t, "", target)
	if err != nil {
		return err
	}
	_, err = p.cfg.Catalog.Exec(ctx, `UPDATE tenants SET schema_version = $2 WHERE id = $1`, id, v)
	if err != nil {
		return silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable")
	}
	return nil
}

func (p *Provisioner) setLimits(ctx context.Context, id string, limits silo.TenantLimits) (*silo.Tenant, error) {
	if err := limits.Validate(); err != nil {
		return nil, err
	}
	var out *silo.Tenant
	params := map[string]any{"connections": limits.Connections, "tempFileMB": limits.TempFileMB}
	err := p.store.Mutate(ctx, "tenant.limits", "tenant/"+id, params, func(tx pgx.Tx) error {
		t, err := p.store.GetTenant(ctx, id)
		if err != nil {
			return err
		}
		switch t.State {
		case silo.TenantPurged:
			return silo.Errorf(silo.ENOTFOUND, "tenant %q was purged", id)
		case silo.TenantProvisioning, silo.TenantMoving:
			return silo.Errorf(silo.ECONFLICT, "tenant %q is %s; change its limits once that is done", id, t.State)
		}
		if err := silo.ValidateDatabaseName(t.Database); err != nil {
			return err
		}
		sc, err := p.shard(ctx, t.Shard)
		if err != nil {
			return err
		}
		t.Limits = limits
		// The catalog first, in the audit's transaction, then the shard: a
		// shard that fails rolls the catalog back.
		if out, err = p.store.UpdateTenantTx(ctx, tx, *t); err != nil {
			return err
		}
		_, err = sc.pool.Exec(ctx, fmt.Sprintf("ALTER ROLE %s CONNECTION LIMIT %d; %s", ident(t.Database), limits.Connections, tempFileLimit(t.Database, limits)))
		return shardmap.ShardError(err, t.Shard)
	})
	return out, err
}

// dropRetiredCopies destroys the copies a purged tenant's moves left on
// their old shards, at once rather than after RetireAfter: an erasure
// leaves no copy. The audit entry tenant.purge-copies lists each one.
// Silo keeps no dump files: an export streams to its client.
func (p *Provisioner) dropRetiredCopies(ctx context.Context, op *silo.Operation) error {
	copies, err := p.store.RetiredDatabasesOf(ctx, op.TenantID)
	if err != nil || len(copies) == 0 {
		return err
	}
	var destroyed []map[string]any
	for _, c := range copies {
		if err := silo.ValidateRetiredName(c.Name); err != nil {
			return err
		}
		sc, err := p.shard(ctx, c.Shard)
		if err == nil {
			err = p.dropDatabaseAndRole(ctx, sc, c.Shard, c.Name)
		}
		if err != nil {
			return err // retried forward: the purge goes on until every copy is gone
		}
		if err := p.store.ForgetRetiredDatabase(ctx, nil, c.Shard, c.Name); err != nil {
			return err
		}
		destroyed = append(destroyed, map[string]any{"shard": c.Shard, "database": c.Name})
		p.log.InfoContext(ctx, "purge: retired copy destroyed", "tenant", op.TenantID, "shard", c.Shard, "database", c.Name)
	}
	return p.store.Mutate(ctx, "tenant.purge-copies", "tenant/"+op.TenantID,
		map[string]any{"operation": op.ID, "copies": destroyed}, func(pgx.Tx) error { return nil })
}
