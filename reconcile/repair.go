package reconcile

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// Repair fixes what is safe to fix among rep's findings: it drops orphaned
// subscriptions, slots, publications, warm units, databases and roles that
// nothing in the catalog names, and retired copies past their time (and
// forgets them). Everything else is only reported.
//
// It first checks again, and acts only on the repairable findings that
// the new check confirms (with rep nil, on all of them); the others are
// Skipped. Right before each drop it asks the catalog once more what names
// the object (Store.Claimants), and skips it when anything does: a
// database that a tenant, an operation, a warm unit or a retired copy
// names is never dropped. Each repair is audited (check.repair, target
// shard/NAME) and logged, whatever its outcome.
//
// It returns the repairs in the order it made them: subscriptions before
// their slots, databases before roles. It returns EUNAVAILABLE without a
// Dropper, and the check's errors; a repair that fails is a Failed entry,
// not an error. ctx bounds the check and the repairs.
func (c *Checker) Repair(ctx context.Context, rep *Report) ([]Repair, error) {
	if c.cfg.Dropper == nil {
		return nil, silo.Errorf(silo.EUNAVAILABLE, "this server does not repair the fleet")
	}
	fresh, err := c.Check(ctx)
	if err != nil {
		return nil, err
	}
	confirmed := map[string]Finding{}
	for _, f := range fresh.Findings {
		if f.Repairable {
			confirmed[f.key()] = f
		}
	}
	var out []Repair
	var todo []Finding
	if rep == nil {
		for _, f := range fresh.Findings {
			if f.Repairable {
				todo = append(todo, f)
			}
		}
	} else {
		for _, f := range rep.Findings {
			if !f.Repairable {
				continue
			}
			if g, ok := confirmed[f.key()]; ok {
				todo = append(todo, g)
				continue
			}
			out = append(out, c.skipped(f, "a new check did not find it: fixed meanwhile, or in flight"))
		}
	}
	sortFindings(todo)
	for _, f := range todo {
		if ctx.Err() != nil {
			out = append(out, c.skipped(f, "the repair ran out of time"))
			continue
		}
		out = append(out, c.repair(ctx, f))
	}
	return out, nil
}

func (c *Checker) skipped(f Finding, why string) Repair {
	c.metrics.repairs.WithLabelValues(string(f.Kind), string(Skipped)).Inc()
	return Repair{Finding: f, Outcome: Skipped, Error: why}
}

// repair fixes one finding, audited.
func (c *Checker) repair(ctx context.Context, f Finding) Repair {
	params := map[string]any{"kind": string(f.Kind), "object": f.Object}
	if f.Database != "" {
		params["database"] = f.Database
	}
	if f.TenantID != "" {
		params["tenant"] = f.TenantID
	}
	err := c.cfg.Store.Mutate(ctx, "check.repair", "shard/"+f.Shard, params, func(tx pgx.Tx) error {
		if err := c.unclaimed(ctx, f); err != nil {
			return err
		}
		return c.fix(ctx, tx, f)
	})
	r := Repair{Finding: f, Outcome: Repaired}
	switch {
	case err == nil:
		c.cfg.Logger.Info("check: repaired", "kind", f.Kind, "shard", f.Shard, "object", f.Object, "database", f.Database)
	case silo.ErrorCode(err) == silo.ECONFLICT:
		r.Outcome, r.Error = Skipped, silo.ErrorMessage(err)
		c.cfg.Logger.Info("check: repair skipped", "kind", f.Kind, "shard", f.Shard, "object", f.Object, "why", r.Error)
	default:
		r.Outcome, r.Error = Failed, silo.ErrorMessage(err)
		c.cfg.Logger.Warn("check: repair failed", "kind", f.Kind, "shard", f.Shard, "object", f.Object, "err", err)
	}
	c.metrics.repairs.WithLabelValues(string(f.Kind), string(r.Outcome)).Inc()
	return r
}

// unclaimed returns ECONFLICT when anything in the catalog names what f
// would drop, or names the tenant database whose move f's object serves
// with an operation in progress. It checks the name's grammar again too:
// a repair drops only names Silo gives.
func (c *Checker) unclaimed(ctx context.Context, f Finding) error {
	name, onlyOps := f.Object, false
	cls, base := classify(f.Object)
	switch f.Kind {
	case OrphanSubscription, OrphanSlot:
		name, onlyOps = moveObject(f.Object), true
	case OrphanPublication:
		name, onlyOps = f.Database, true
		if f.Object != movePub || silo.ValidateDatabaseName(name) != nil {
			name = ""
		}
	case OrphanRole:
		if cls == subRole {
			name, onlyOps = base, true
		} else if cls != tenant && cls != retired {
			name = ""
		}
	case OrphanDatabase:
		if cls != tenant && cls != retired && cls != scratch {
			name = ""
		}
	case OrphanWarmUnit:
		if cls != warm {
			name = ""
		}
	case RetiredExpired:
		if cls != retired {
			name = ""
		}
	default:
		return silo.Errorf(silo.EINVALID, "a %s finding is not repaired", f.Kind)
	}
	if name == "" {
		return silo.Errorf(silo.EINVALID, "%s is not a name Silo gives: not repaired", f.Object)
	}
	claims, err := c.cfg.Store.Claimants(ctx, name)
	if err != nil {
		return err
	}
	var why []string
	for _, cl := range claims {
		switch {
		case onlyOps && cl.What != "operation":
		case f.Kind == RetiredExpired && cl.What == "retired copy" && cl.Shard == f.Shard:
		default:
			why = append(why, describe(cl))
		}
	}
	if len(why) > 0 {
		return silo.Errorf(silo.ECONFLICT, "%s is named by %s now: left alone", name, strings.Join(why, "; "))
	}
	return nil
}

func describe(cl shardmap.Claim) string {
	switch cl.What {
	case "tenant":
		return fmt.Sprintf("tenant %s (%s) on shard %s", cl.TenantID, cl.Detail, cl.Shard)
	case "operation":
		return fmt.Sprintf("operation %s of tenant %s in progress", cl.Detail, cl.TenantID)
	case "retired copy":
		return fmt.Sprintf("a retired copy of tenant %s on shard %s", cl.TenantID, cl.Shard)
	}
	return fmt.Sprintf("a %s on shard %s", cl.What, cl.Shard)
}

// fix carries out the repair of f; a retired copy is forgotten in tx, the
// audit entry's transaction.
func (c *Checker) fix(ctx context.Context, tx pgx.Tx, f Finding) error {
	d := c.cfg.Dropper
	switch f.Kind {
	case OrphanSubscription:
		return d.DropSubscription(ctx, f.Shard, f.Database, f.Object)
	case OrphanSlot:
		return d.DropSlot(ctx, f.Shard, f.Object)
	case OrphanPublication:
		return d.DropPublication(ctx, f.Shard, f.Database, f.Object)
	case OrphanDatabase, OrphanWarmUnit:
		return d.DropDatabaseAndRole(ctx, f.Shard, f.Object)
	case OrphanRole:
		return d.DropRole(ctx, f.Shard, f.Object)
	case RetiredExpired:
		if err := d.DropDatabaseAndRole(ctx, f.Shard, f.Object); err != nil {
			return err
		}
		return c.cfg.Store.ForgetRetiredDatabase(ctx, tx, f.Shard, f.Object)
	}
	return silo.Errorf(silo.EINVALID, "a %s finding is not repaired", f.Kind)
}
