package rebalancer

import (
	"cmp"
	"fmt"
	"slices"
)

// What a plan balances.
const (
	ByTenants = "tenants"
	ByBytes   = "bytes"
)

// DefaultTolerance is how far from the weighted mean a shard's load may be,
// as a fraction of the mean, before a plan moves tenants off or onto it.
const DefaultTolerance = 0.1

// Shard is one active shard and what it holds.
type Shard struct {
	Name    string
	Region  string
	Weight  int // relative capacity, 1 or more
	Tenants []Tenant
}

// Tenant is one movable tenant and its database's size.
type Tenant struct {
	ID    string
	Bytes int64
}

// Move is one tenant's move in a plan.
type Move struct {
	Tenant string
	From   string
	To     string
	Bytes  int64
}

// Options tune a plan.
type Options struct {
	By        string  // ByTenants (default) or ByBytes
	MaxMoves  int     // 0: no limit
	Tolerance float64 // 0: DefaultTolerance
}

// Plan returns the moves that bring every shard's load per unit of weight
// within the tolerance of its region's weighted mean, or as close as the
// tenants allow: tenants only move within their region. Each move takes
// from the most loaded shard to the least loaded one, and picks the tenant
// that best closes the gap (the smallest, when balancing by tenants, so that
// the plan copies the fewest bytes). The plan is deterministic.
func Plan(shards []Shard, o Options) ([]Move, error) {
	if o.By == "" {
		o.By = ByTenants
	}
	if o.By != ByTenants && o.By != ByBytes {
		return nil, fmt.Errorf("balance by %q: must be %s or %s", o.By, ByTenants, ByBytes)
	}
	if o.Tolerance == 0 {
		o.Tolerance = DefaultTolerance
	}
	if o.Tolerance < 0 || o.MaxMoves < 0 {
		return nil, fmt.Errorf("the tolerance and the move limit must not be negative")
	}
	regions := map[string][]*state{}
	var order []string
	for _, sh := range shards {
		if sh.Weight < 1 {
			return nil, fmt.Errorf("shard %q has weight %d; it must be at least 1", sh.Name, sh.Weight)
		}
		st := &state{name: sh.Name, weight: float64(sh.Weight), tenants: slices.Clone(sh.Tenants)}
		for _, t := range sh.Tenants {
			st.load += cost(o.By, t)
		}
		if _, ok := regions[sh.Region]; !ok {
			order = append(order, sh.Region)
		}
		regions[sh.Region] = append(regions[sh.Region], st)
	}
	slices.Sort(order)
	var moves []Move
	for _, region := range order {
		moves = append(moves, planRegion(regions[region], o, o.MaxMoves-len(moves))...)
		if o.MaxMoves > 0 && len(moves) >= o.MaxMoves {
			break
		}
	}
	return moves, nil
}

type state struct {
	name    string
	weight  float64
	load    float64
	tenants []Tenant
}

func (s *state) per() float64 { return s.load / s.weight }

func cost(by string, t Tenant) float64 {
	if by == ByBytes {
		return float64(t.Bytes)
	}
	return 1
}

func planRegion(shards []*state, o Options, budget int) []Move {
	if len(shards) < 2 {
		return nil
	}
	var total, weight float64
	for _, s := range shards {
		total += s.load
		weight += s.weight
	}
	mean := total / weight
	var moves []Move
	for o.MaxMoves == 0 || len(moves) < budget {
		// Most and least loaded per unit of weight; names break ties.
		byLoad := slices.Clone(shards)
		slices.SortFunc(byLoad, func(a, b *state) int {
			if c := cmp.Compare(b.per(), a.per()); c != 0 {
				return c
			}
			return cmp.Compare(a.name, b.name)
		})
		hi, lo := byLoad[0], byLoad[len(byLoad)-1]
		if hi.per() <= mean*(1+o.Tolerance) && lo.per() >= mean*(1-o.Tolerance) {
			break
		}
		// The tenant whose move leaves the two closest to the mean, if it
		// narrows the gap between them at all.
		best, bestSpread := -1, abs(hi.per()-lo.per())
		for i, t := range hi.tenants {
			c := cost(o.By, t)
			spread := abs((hi.load-c)/hi.weight - (lo.load+c)/lo.weight)
			if spread < bestSpread || (spread == bestSpread && best >= 0 && smaller(t, hi.tenants[best])) {
				best, bestSpread = i, spread
			}
		}
		if best < 0 {
			break // no single move narrows the gap
		}
		t := hi.tenants[best]
		hi.tenants = slices.Delete(hi.tenants, best, best+1)
		lo.tenants = append(lo.tenants, t)
		c := cost(o.By, t)
		hi.load -= c
		lo.load += c
		moves = append(moves, Move{Tenant: t.ID, From: hi.name, To: lo.name, Bytes: t.Bytes})
	}
	return moves
}

func smaller(a, b Tenant) bool {
	if a.Bytes != b.Bytes {
		return a.Bytes < b.Bytes
	}
	return a.ID < b.ID
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}
