package silo

import (
	"regexp"
	"slices"
	"strings"
	"time"
)

// TenantState is the state of a tenant in the catalog.
type TenantState string

// Tenant states. A tenant's data is reachable only while it is active.
const (
	TenantProvisioning TenantState = "provisioning" // its database is being made
	TenantActive       TenantState = "active"
	TenantSuspended    TenantState = "suspended" // role cannot log in until resumed
	TenantMoving       TenantState = "moving"    // the cutover of a move: requests are held
	TenantDeleted      TenantState = "deleted"   // soft-deleted: data kept for the grace period
	TenantPurged       TenantState = "purged"    // database and role dropped; the row is a tombstone
)

// Valid reports whether s is a known tenant state.
func (s TenantState) Valid() bool {
	switch s {
	case TenantProvisioning, TenantActive, TenantSuspended, TenantMoving, TenantDeleted, TenantPurged:
		return true
	}
	return false
}

// Tenant is one customer of the application built on Silo, with its own
// database on one shard.
type Tenant struct {
	ID            string
	Shard         string
	Database      string
	Region        string
	State         TenantState
	SchemaVersion int64
	// Epoch grows by one on every change of the tenant's row. Writers pass
	// the epoch they read, so a change based on a stale read is refused, and
	// routes cached with an older epoch are known to be stale.
	Epoch     int64
	CreatedAt time.Time
	UpdatedAt time.Time
	// DeletedAt is when a soft delete happened, and PurgeAfter when the
	// grace period ends and the database is dropped.
	DeletedAt  *time.Time
	PurgeAfter *time.Time
}

// MaxTenantIDLen keeps "t_" + id within PostgreSQL's 63-byte identifiers
// with room to spare for suffixes used during moves.
const MaxTenantIDLen = 48

var tenantIDRE = regexp.MustCompile(`^[a-z]([a-z0-9-]*[a-z0-9])?$`)

// reservedTenantIDs would confuse operators or collide with PostgreSQL's own
// names once prefixed or shown.
var reservedTenantIDs = []string{"admin", "postgres", "public", "silo", "system", "template", "root"}

// ValidateTenantID checks a tenant id: 1 to MaxTenantIDLen lowercase letters,
// digits and hyphens, starting with a letter, not ending with a hyphen, and
// not a reserved name. It returns an EINVALID *Error naming the rule broken.
func ValidateTenantID(id string) error {
	switch {
	case id == "":
		return Errorf(EINVALID, "tenant id is required")
	case len(id) > MaxTenantIDLen:
		return Errorf(EINVALID, "tenant id is longer than %d characters", MaxTenantIDLen)
	case !tenantIDRE.MatchString(id):
		return Errorf(EINVALID, "tenant id %q must be lowercase letters, digits and hyphens, start with a letter and not end with a hyphen", id)
	case slices.Contains(reservedTenantIDs, id):
		return Errorf(EINVALID, "tenant id %q is reserved", id)
	}
	return nil
}

// DatabaseName returns the name of the tenant's database and login role on
// its shard: "t_" and the id with hyphens as underscores. Ids hold no
// underscores, so distinct ids never share a name, and the name needs no
// quoting in psql (Silo quotes it anyway).
func DatabaseName(id string) string {
	return "t_" + strings.ReplaceAll(id, "-", "_")
}
