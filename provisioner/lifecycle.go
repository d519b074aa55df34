package provisioner

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
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
		return p.insertOperation(ctx, tx, shardmap.NewOperation{ID: opID, Kind: kind, TenantID: id, Params: params})
	})
	if err != nil {
		return Result{}, err
	}
	return p.await(ctx, opID, p.launch(ctx, opID), wait)
}

var pastTense = map[silo.OperationKind]string{
	silo.OpSuspend: "suspended", silo.OpResume: "resumed", silo.OpDelete: "deleted", silo.OpPurge: "purged",
}

// plan returns how to carry out an operation.
func (p *Provisioner) plan(op *silo.Operation, params map[string]any) (plan, error) {
	switch op.Kind {
	case silo.OpCreate:
		return p.createPlan(op, params)
	case silo.OpMove:
		return p.movePlan(op, params)
	}
	id, name := op.TenantID, silo.DatabaseName(op.TenantID)
	var sc *shardConn
	var shard string
	load := func(ctx context.Context) error {
		if sc != nil {
			return nil
		}
		t, err := p.store.GetTenant(ctx, id)
		if err != nil {
			return err
		}
		shard = t.Shard
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
			_, err = p.store.UpdateTenantTx(ctx, nil, *t)
			return err
		}
	}
	// Undo restores the role's login as it was before the operation.
	restore := []step{{"undo:restore-login", login(params["priorState"] == string(silo.TenantActive))}}
	switch op.Kind {
	case silo.OpSuspend:
		return plan{forward: []step{{"disable-login", login(false)}, {"mark-suspended", mark(silo.TenantSuspended)}}, undo: restore}, nil
	case silo.OpResume:
		return plan{forward: []step{{"enable-login", login(true)}, {"mark-active", mark(silo.TenantActive)}}, undo: restore}, nil
	case silo.OpDelete:
		return plan{forward: []step{{"disable-login", login(false)}, {"mark-deleted", mark(silo.TenantDeleted)}}, undo: restore}, nil
	case silo.OpPurge:
		// No undo: a purge goes forward until it is done.
		return plan{forward: []step{
			{"disable-login", login(false)},
			{"drop-database", func(ctx context.Context) error {
				if err := load(ctx); err != nil {
					return err
				}
				_, err := sc.pool.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)")
				return shardError(err, shard)
			}},
			{"drop-role", func(ctx context.Context) error {
				if err := load(ctx); err != nil {
					return err
				}
				_, err := sc.pool.Exec(ctx, "DROP ROLE IF EXISTS "+ident(name))
				return shardError(err, shard)
			}},
			{"mark-purged", mark(silo.TenantPurged)},
		}}, nil
	}
	return plan{}, fmt.Errorf("unknown operation kind %q", op.Kind)
}

// setLogin lets the tenant's role log in, or not; turning it off also ends
// the role's sessions, so the data is unreachable when this returns.
func (p *Provisioner) setLogin(ctx context.Context, sc *shardConn, shard, name string, on bool) error {
	attr := "NOLOGIN"
	if on {
		attr = "LOGIN"
	}
	_, err := sc.pool.Exec(ctx, "ALTER ROLE "+ident(name)+" "+attr)
	if sqlState(err) == "42704" { // undefined_object: already purged
		return nil
	}
	if err != nil {
		return shardError(err, shard)
	}
	if !on {
		_, err = sc.pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1`, name)
	}
	return shardError(err, shard)
}
