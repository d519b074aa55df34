package reconcile

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// runningTenants returns the tenants with an operation in progress.
func runningTenants(o *shardmap.Owners) map[string]bool {
	out := map[string]bool{}
	for _, op := range o.Running {
		out[op.TenantID] = true
	}
	return out
}

// namesOn returns the names of databases and roles that the catalog places
// on shard (tenants, warm units, retired copies, the template), and those
// that operations in progress name, which may be on any shard.
func namesOn(shard string, o *shardmap.Owners) map[string]bool {
	out := map[string]bool{templateDB: true, ownerRole: true}
	for _, t := range o.Tenants {
		if t.Shard == shard {
			out[t.Database] = true
		}
	}
	for _, w := range o.Warm {
		if w.Shard == shard {
			out[w.Name] = true
		}
	}
	for _, r := range o.Retired {
		if r.Shard == shard {
			out[r.Name] = true
		}
	}
	for name := range inFlight(o) {
		out[name] = true
	}
	return out
}

// inFlight returns the names operations in progress may have made: their
// tenant's database and role, and the names in their parameters (the warm
// unit a create claimed).
func inFlight(o *shardmap.Owners) map[string]bool {
	out := map[string]bool{}
	for _, op := range o.Running {
		if op.Database != "" {
			out[op.Database] = true
		}
		for _, v := range op.Params {
			if s, ok := v.(string); ok {
				if cls, _ := classify(s); cls != notSilo {
					out[s] = true
				}
			}
		}
	}
	return out
}

// moving returns the tenant databases that a move in progress is copying:
// its slot, publication, subscription and subscription role are in flight.
func moving(o *shardmap.Owners) map[string]bool {
	out := map[string]bool{}
	for _, op := range o.Running {
		if op.Kind == silo.OpMove && op.Database != "" {
			out[op.Database] = true
		}
	}
	return out
}

// owners describes, for messages, what in the catalog places each name
// anywhere: "tenant acme on shard eu-1".
func owners(os ...*shardmap.Owners) map[string][]string {
	seen := map[string]bool{}
	out := map[string][]string{}
	add := func(name, what string) {
		if !seen[name+"\x00"+what] {
			seen[name+"\x00"+what] = true
			out[name] = append(out[name], what)
		}
	}
	for _, o := range os {
		for _, t := range o.Tenants {
			add(t.Database, fmt.Sprintf("tenant %s on shard %s", t.ID, t.Shard))
		}
		for _, w := range o.Warm {
			add(w.Name, "a warm unit of shard "+w.Shard)
		}
		for _, r := range o.Retired {
			add(r.Name, fmt.Sprintf("a retired copy of tenant %s on shard %s", r.TenantID, r.Shard))
		}
	}
	return out
}

// judge turns what the shards hold and the two reads of the catalog
// around them into findings. An orphan is an object that neither read of
// the catalog places on its shard: everything Silo makes is recorded in
// the catalog before it is made, and forgotten only after it is dropped.
// A tenant's findings count only when both reads agree on the tenant and
// no operation or migration ran on it in either.
func judge(scans []*shardScan, before, after *shardmap.Owners, now time.Time) *Report {
	rep := &Report{Tenants: len(before.Tenants)}
	busy := runningTenants(before)
	for id := range runningTenants(after) {
		busy[id] = true
	}
	for id := range before.Migrating {
		busy[id] = true
	}
	for id := range after.Migrating {
		busy[id] = true
	}
	for _, t := range before.Tenants {
		if busy[t.ID] {
			rep.InFlight++
		}
	}
	moves := moving(before)
	for db := range moving(after) {
		moves[db] = true
	}
	anywhere := owners(before, after)
	for name := range inFlight(before) {
		anywhere[name] = append(anywhere[name], "an operation in progress")
	}
	for name := range inFlight(after) {
		anywhere[name] = append(anywhere[name], "an operation in progress")
	}
	stable := map[string]silo.Tenant{}
	for _, t := range after.Tenants {
		stable[t.ID] = t
	}
	var fs []Finding
	for _, s := range scans {
		res := ShardResult{Name: s.name}
		if s.err != nil {
			res.Error = silo.ErrorMessage(s.err)
			rep.Shards = append(rep.Shards, res)
			fs = append(fs, Finding{Kind: ShardUnreachable, Shard: s.name,
				Message: fmt.Sprintf("shard %s could not be read: %s", s.name, silo.ErrorMessage(s.err))})
			continue
		}
		res.Databases = len(s.databases)
		rep.Shards = append(rep.Shards, res)
		named := namesOn(s.name, before)
		for name := range namesOn(s.name, after) {
			named[name] = true
		}
		fs = append(fs, orphans(s, named, moves, anywhere)...)
		for _, t := range before.Tenants {
			if t.Shard != s.name || busy[t.ID] {
				continue
			}
			a, ok := stable[t.ID]
			if !ok || a.Epoch != t.Epoch || a.SchemaVersion != t.SchemaVersion || a.Shard != t.Shard {
				continue // changed while the shard was read
			}
			if ts := s.tenants[t.ID]; ts != nil && ts.versionRead {
				rep.VersionsRead++
			}
			fs = append(fs, tenantFindings(s, t)...)
		}
		fs = append(fs, expired(s, before, after, now)...)
	}
	sortFindings(fs)
	rep.Findings = fs
	return rep
}

// orphans reports the shard's objects of Silo's naming that named (what
// the catalog places on the shard) lacks.
func orphans(s *shardScan, named, moves map[string]bool, anywhere map[string][]string) []Finding {
	var fs []Finding
	names := map[string]bool{}
	for name := range s.databases {
		names[name] = true
	}
	for name := range s.roles {
		names[name] = true
	}
	for _, name := range sortedKeys(names) {
		if named[name] {
			continue
		}
		cls, base := classify(name)
		db, isDB := s.databases[name]
		_, isRole := s.roles[name]
		if (cls == scratch && !isDB) || (cls == subRole && isDB) {
			continue // Silo makes no role of a scratch name, no database of a role's
		}
		f := Finding{Kind: OrphanDatabase, Shard: s.name, Object: name, Repairable: true}
		what := "database"
		switch {
		case isDB && isRole:
			what = "database and role"
		case !isDB:
			what, f.Kind = "role", OrphanRole
		}
		switch cls {
		case template:
			continue
		case scratch:
			if db.sessions > 0 {
				continue // a migration run is trying its files there now
			}
			f.Message = fmt.Sprintf("%s %s: a migration run's scratch copy of the template, left behind", what, name)
		case subRole:
			if moves[base] {
				continue
			}
			f.Message = fmt.Sprintf("role %s: a move's subscription role for %s, with no move in progress", name, base)
		case warm:
			f.Kind = OrphanWarmUnit
			f.Message = fmt.Sprintf("warm unit %s (%s): not in the catalog's warm pool", name, what)
		case retired:
			f.Message = fmt.Sprintf("%s %s: a moved tenant's old copy that the catalog does not record", what, name)
		default:
			f.Message = fmt.Sprintf("%s %s: no tenant, operation, warm unit or retired copy names it", what, name)
		}
		if isDB && db.size >= 0 {
			f.Message += " (" + humanBytes(db.size) + ")"
		}
		if claims := anywhere[name]; len(claims) > 0 {
			// Named elsewhere: a copy of some tenant's database, say. Not
			// Silo's to drop; an operator decides.
			f.Repairable = false
			f.Message = fmt.Sprintf("%s %s is not in the catalog on shard %s, but the catalog names it elsewhere (%s): drop it by hand once you know it is stale",
				what, name, s.name, strings.Join(claims, "; "))
			if isDB && db.size >= 0 {
				f.Message += " (" + humanBytes(db.size) + ")"
			}
		}
		fs = append(fs, f)
	}
	for _, sl := range s.slots {
		base := moveObject(sl.name)
		if base == "" || moves[base] {
			continue
		}
		state := "inactive"
		if sl.active {
			state = "active"
		}
		fs = append(fs, Finding{Kind: OrphanSlot, Shard: s.name, Object: sl.name, Database: sl.database, Repairable: true,
			Message: fmt.Sprintf("replication slot %s (%s) of database %s: no move in progress; it holds the shard's WAL", sl.name, state, sl.database)})
	}
	for _, sub := range s.subs {
		base := moveObject(sub.name)
		if base == "" || moves[base] {
			continue
		}
		fs = append(fs, Finding{Kind: OrphanSubscription, Shard: s.name, Object: sub.name, Database: sub.database, Repairable: true,
			Message: fmt.Sprintf("subscription %s in database %s: no move in progress", sub.name, sub.database)})
	}
	return fs
}

// tenantFindings reports what is wrong with a tenant that nothing was
// changing: its database or role missing, Silo's publication left in its
// database, unpopulated materialized views, its schema version.
func tenantFindings(s *shardScan, t silo.Tenant) []Finding {
	var fs []Finding
	base := Finding{Shard: s.name, TenantID: t.ID}
	if _, ok := s.databases[t.Database]; !ok {
		f := base
		f.Kind, f.Object = MissingDatabase, t.Database
		f.Message = fmt.Sprintf("tenant %s is %s, but its database %s is not on shard %s", t.ID, t.State, t.Database, s.name)
		fs = append(fs, f)
	}
	if _, ok := s.roles[t.Database]; !ok {
		f := base
		f.Kind, f.Object = MissingRole, t.Database
		f.Message = fmt.Sprintf("tenant %s is %s, but its role %s is not on shard %s", t.ID, t.State, t.Database, s.name)
		fs = append(fs, f)
	}
	ts := s.tenants[t.ID]
	if ts == nil {
		return fs
	}
	if ts.err != nil {
		f := base
		f.Kind, f.Object = CheckFailed, t.Database
		f.Message = fmt.Sprintf("tenant %s's database %s could not be read: %s", t.ID, t.Database, silo.ErrorMessage(ts.err))
		fs = append(fs, f)
	}
	for _, p := range ts.publications {
		f := base
		f.Kind, f.Object, f.Database, f.Repairable = OrphanPublication, p, t.Database, true
		f.Message = fmt.Sprintf("publication %s in tenant %s's database %s: no move in progress", p, t.ID, t.Database)
		fs = append(fs, f)
	}
	for _, mv := range ts.matviews {
		f := base
		f.Kind, f.Object, f.Database = UnpopulatedMatview, mv, t.Database
		f.Message = fmt.Sprintf("materialized view %s of tenant %s was made WITH NO DATA and never refreshed: reading it fails until REFRESH MATERIALIZED VIEW", mv, t.ID)
		fs = append(fs, f)
	}
	if ts.versionRead && ts.version != t.SchemaVersion {
		f := base
		f.Kind, f.Object = VersionMismatch, t.Database
		f.Message = fmt.Sprintf("tenant %s's database is at schema version %d; the catalog says %d", t.ID, ts.version, t.SchemaVersion)
		fs = append(fs, f)
	}
	return fs
}

// expired reports the shard's retired copies past their time in both reads
// of the catalog.
func expired(s *shardScan, before, after *shardmap.Owners, now time.Time) []Finding {
	still := map[string]bool{}
	for _, r := range after.Retired {
		if r.Shard == s.name && !r.DropAfter.After(now) {
			still[r.Name] = true
		}
	}
	var fs []Finding
	for _, r := range before.Retired {
		if r.Shard != s.name || r.DropAfter.After(now) || !still[r.Name] {
			continue
		}
		f := Finding{Kind: RetiredExpired, Shard: s.name, Object: r.Name, TenantID: r.TenantID, Repairable: true}
		_, isDB := s.databases[r.Name]
		_, isRole := s.roles[r.Name]
		switch {
		case isDB || isRole:
			f.Message = fmt.Sprintf("retired copy %s of tenant %s was due to be dropped at %s", r.Name, r.TenantID, r.DropAfter.UTC().Format(time.RFC3339))
		default:
			f.Message = fmt.Sprintf("retired copy %s of tenant %s is gone, but the catalog still records it", r.Name, r.TenantID)
		}
		fs = append(fs, f)
	}
	return fs
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// humanBytes formats a size for people: 7.4 MiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
