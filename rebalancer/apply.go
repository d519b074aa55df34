package rebalancer

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/silo-db/silo"
)

// Started is a move a rebalance or a drain asked for: its operation, or why
// it could not start.
type Started struct {
	Move
	OperationID string
	Error       string
}

// Apply plans (as Plan) and starts every move of the plan as an operation
// of its own, durable and resumable; it does not wait for them. The
// engine runs a bounded number of operations at once on each server.
func (r *Rebalancer) Apply(ctx context.Context, o Options) (*Report, []Started, error) {
	if r.eng == nil {
		return nil, nil, silo.Errorf(silo.EUNAVAILABLE, "this server does not move tenants")
	}
	rep, err := r.Plan(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	return rep, r.start(ctx, rep.Moves), nil
}

// Drain starts moving every active tenant off a shard (which the caller has
// marked draining), each to the least loaded active shard of its region,
// counting the tenants each move adds. Tenants with no shard to go to are
// reported with why.
func (r *Rebalancer) Drain(ctx context.Context, shard string) ([]Started, error) {
	if r.eng == nil {
		return nil, silo.Errorf(silo.EUNAVAILABLE, "this server does not move tenants")
	}
	rows, err := r.catalog.Query(ctx, `
		SELECT t.id, t.region FROM tenants t WHERE t.shard = $1 AND t.state = 'active' ORDER BY t.id`, shard)
	if err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable: %v", err)
	}
	type tenant struct{ id, region string }
	var list []tenant
	for rows.Next() {
		var t tenant
		if err := rows.Scan(&t.id, &t.region); err != nil {
			return nil, silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable: %v", err)
		}
		list = append(list, t)
	}
	if err := rows.Err(); err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable: %v", err)
	}
	type target struct {
		name, region string
		weight       float64
		tenants      float64
	}
	rows, err = r.catalog.Query(ctx, `
		SELECT s.name, s.region, s.weight,
		       (SELECT count(*) FROM tenants t WHERE t.shard = s.name AND t.state <> 'purged')
		FROM shards s WHERE s.state = 'active' AND s.name <> $1 ORDER BY s.name`, shard)
	if err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable: %v", err)
	}
	var targets []*target
	for rows.Next() {
		var t target
		var w, n int
		if err := rows.Scan(&t.name, &t.region, &w, &n); err != nil {
			return nil, silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable: %v", err)
		}
		t.weight, t.tenants = float64(w), float64(n)
		targets = append(targets, &t)
	}
	if err := rows.Err(); err != nil {
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "the catalog is unavailable: %v", err)
	}
	var moves []Move
	var stuck []Started
	for _, t := range list {
		var best *target
		for _, c := range targets {
			if c.region != t.region {
				continue
			}
			if best == nil || cmp.Compare(c.tenants/c.weight, best.tenants/best.weight) < 0 {
				best = c
			}
		}
		if best == nil {
			stuck = append(stuck, Started{Move: Move{Tenant: t.id, From: shard},
				Error: fmt.Sprintf("no other active shard in region %q", t.region)})
			continue
		}
		best.tenants++
		moves = append(moves, Move{Tenant: t.id, From: shard, To: best.name})
	}
	return slices.Concat(r.start(ctx, moves), stuck), nil
}

// start starts each move's operation, without waiting for it.
func (r *Rebalancer) start(ctx context.Context, moves []Move) []Started {
	out := make([]Started, 0, len(moves))
	for _, m := range moves {
		s := Started{Move: m}
		res, err := r.Move(ctx, MoveRequest{ID: m.Tenant, Shard: m.To}, 0)
		if res.Operation != nil {
			s.OperationID = res.Operation.ID
		}
		if err != nil {
			s.Error = silo.ErrorMessage(err)
		}
		out = append(out, s)
	}
	return out
}
