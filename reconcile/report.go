package reconcile

import (
	"cmp"
	"slices"
	"time"
)

// Kind is what a finding is about.
type Kind string

// Kinds of findings. Orphans are things Silo made on a shard that nothing
// in the catalog names: no tenant (in any state but purged), no operation
// in progress, no warm unit, no retired copy. What an operation in
// progress names is in flight, and never a finding.
const (
	// OrphanDatabase is a database of Silo's naming (t_…, silo_moved_…, a
	// migration's scratch silo_check_…) that nothing names, with its role
	// when there is one; or a copy of a tenant's database on a shard that
	// is not the tenant's, which is reported but never repaired.
	OrphanDatabase Kind = "orphan-database"
	// OrphanRole is a tenant's or a move's role without a database that
	// anything names.
	OrphanRole Kind = "orphan-role"
	// OrphanSlot is a move's replication slot (silo_move_…) with no move in
	// progress: it holds the shard's WAL for ever.
	OrphanSlot Kind = "orphan-slot"
	// OrphanPublication is a move's publication (silo_move) in a tenant's
	// database with no move in progress.
	OrphanPublication Kind = "orphan-publication"
	// OrphanSubscription is a move's subscription with no move in progress.
	OrphanSubscription Kind = "orphan-subscription"
	// OrphanWarmUnit is a warm database or role (silo_warm_…) that the
	// catalog's warm pool does not list.
	OrphanWarmUnit Kind = "orphan-warm-unit"
	// MissingDatabase is a tenant whose database is not on its shard.
	MissingDatabase Kind = "missing-database"
	// MissingRole is a tenant whose login role is not on its shard.
	MissingRole Kind = "missing-role"
	// VersionMismatch is an active tenant whose database is at another
	// schema version than the catalog says.
	VersionMismatch Kind = "version-mismatch"
	// RetiredExpired is a moved tenant's old database kept past its time.
	RetiredExpired Kind = "retired-expired"
	// UnpopulatedMatview is a materialized view of a tenant's that was made
	// WITH NO DATA and never refreshed: reading it fails.
	UnpopulatedMatview Kind = "unpopulated-matview"
	// ShardUnreachable is a shard the check could not read.
	ShardUnreachable Kind = "shard-unreachable"
	// CheckFailed is a tenant's database the check could not read.
	CheckFailed Kind = "check-failed"
)

// Kinds lists every kind, in the order a repair goes: a subscription
// before its slot, slots and subscriptions before their databases (which
// PostgreSQL will not drop while they exist), databases before roles.
var Kinds = []Kind{
	OrphanSubscription, OrphanSlot, OrphanPublication, RetiredExpired, OrphanWarmUnit,
	OrphanDatabase, OrphanRole, MissingDatabase, MissingRole, VersionMismatch,
	UnpopulatedMatview, CheckFailed, ShardUnreachable,
}

// Finding is one thing wrong on a shard, or between a shard and the
// catalog.
type Finding struct {
	Kind  Kind
	Shard string
	// Object is what the finding is about: a database, role, slot,
	// publication, subscription or materialized view (schema.name).
	Object string
	// Database is the database Object lives in, for publications,
	// subscriptions, slots and materialized views.
	Database string
	// TenantID is the tenant concerned, when one is.
	TenantID string
	// Message says what is wrong, for people.
	Message string
	// Repairable is whether Repair fixes it: only what nothing in the
	// catalog names, and retired copies past their time.
	Repairable bool
}

// key identifies a finding across two checks.
func (f Finding) key() string {
	return string(f.Kind) + "\x00" + f.Shard + "\x00" + f.Database + "\x00" + f.Object
}

// ShardResult is how the check of one shard went.
type ShardResult struct {
	Name string
	// Databases is how many of Silo's databases the shard holds.
	Databases int
	// Error is why the shard could not be read; "" when it was.
	Error string
}

// Report is what a check found.
type Report struct {
	Started  time.Time
	Duration time.Duration
	Shards   []ShardResult
	// Tenants is how many tenants (not purged) the catalog lists, and
	// VersionsRead how many active tenants' schema versions were read:
	// suspended and deleted tenants' roles cannot log in, and Silo reads a
	// tenant's tables only as the tenant.
	Tenants      int
	VersionsRead int
	// InFlight is how many tenants had an operation in progress, or a
	// migration: what they name was left alone.
	InFlight int
	Findings []Finding
}

// Clean reports whether the check found nothing.
func (r *Report) Clean() bool { return len(r.Findings) == 0 }

// Count returns the number of findings of each kind.
func (r *Report) Count() map[Kind]int {
	n := map[Kind]int{}
	for _, f := range r.Findings {
		n[f.Kind]++
	}
	return n
}

// sortFindings orders findings by kind (repair order), shard and object.
func sortFindings(fs []Finding) {
	rank := func(k Kind) int { return slices.Index(Kinds, k) }
	slices.SortFunc(fs, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(rank(a.Kind), rank(b.Kind)), cmp.Compare(a.Shard, b.Shard),
			cmp.Compare(a.Database, b.Database), cmp.Compare(a.Object, b.Object))
	})
}

// Outcome is what a repair did with a finding.
type Outcome string

// Outcomes of a repair.
const (
	Repaired Outcome = "repaired"
	// Skipped: a new check did not find it again (someone fixed it, or it
	// was in flight), or something now names it.
	Skipped Outcome = "skipped"
	Failed  Outcome = "failed"
)

// Repair is what a repair did with one finding.
type Repair struct {
	Finding
	Outcome Outcome
	// Error says why it was skipped or failed.
	Error string
}
