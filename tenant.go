package silo

import (
	"crypto/rand"
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
	// Limits bound what the tenant's role may take of its shard.
	Limits TenantLimits
}

// TenantLimits are a tenant's resource bounds, set on its role on the
// shard, where PostgreSQL enforces them for every Silo server at once and
// the tenant cannot change them. -1 means no limit.
type TenantLimits struct {
	// Connections is the role's CONNECTION LIMIT: its sessions on the
	// shard at once, Silo's own included.
	Connections int
	// TempFileMB is the role's temp_file_limit, per session, in MiB: the
	// disk one query may fill with sorts and hashes. Only a superuser may
	// set it, so the tenant cannot raise it.
	TempFileMB int
}

// Defaults and bounds of TenantLimits.
const (
	DefaultTenantConnections = 20
	DefaultTenantTempFileMB  = 5120
	MaxTenantConnections     = 10000
	MaxTenantTempFileMB      = 2097151 // temp_file_limit is an int of kB
)

// DefaultTenantLimits returns the limits of a tenant created without any.
func DefaultTenantLimits() TenantLimits {
	return TenantLimits{Connections: DefaultTenantConnections, TempFileMB: DefaultTenantTempFileMB}
}

// Validate checks the limits: each -1 (none) or within its range. It
// returns EINVALID naming the bound broken.
func (l TenantLimits) Validate() error {
	if l.Connections != -1 && (l.Connections < 1 || l.Connections > MaxTenantConnections) {
		return Errorf(EINVALID, "the connection limit %d must be -1 (none) or 1 to %d", l.Connections, MaxTenantConnections)
	}
	if l.TempFileMB != -1 && (l.TempFileMB < 1 || l.TempFileMB > MaxTenantTempFileMB) {
		return Errorf(EINVALID, "the temp file limit %d MiB must be -1 (none) or 1 to %d", l.TempFileMB, MaxTenantTempFileMB)
	}
	return nil
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

// MaxDatabaseNameLen is PostgreSQL's limit on identifiers.
const MaxDatabaseNameLen = 63

var databaseNameRE = regexp.MustCompile(`^t_[a-z0-9_]+$`)

// ValidateDatabaseName checks the name of a tenant's database and role as
// the catalog holds it: "t_" and lowercase letters, digits and
// underscores, within PostgreSQL's 63 bytes. Every name Silo puts in DDL
// passes it first, and is quoted as well. It returns EINVALID.
func ValidateDatabaseName(name string) error {
	if len(name) > MaxDatabaseNameLen || !databaseNameRE.MatchString(name) {
		return Errorf(EINVALID, "database name %q must be t_ and lowercase letters, digits and underscores, at most %d characters", name, MaxDatabaseNameLen)
	}
	return nil
}

// retiredNameRE is the grammar of a moved tenant's old database (and role)
// on the shard it left: "silo_moved_", a random tag, "_" and the tenant's
// database name.
var retiredNameRE = regexp.MustCompile(`^silo_moved_[a-z0-9]+_t_[a-z0-9_]+$`)

// ValidateRetiredName returns EINVALID unless name is a retired copy's
// name, which Silo then puts in DDL.
func ValidateRetiredName(name string) error {
	if len(name) > MaxDatabaseNameLen || !retiredNameRE.MatchString(name) {
		return Errorf(EINVALID, "retired database name %q is not silo_moved_TAG_NAME, at most %d characters", name, MaxDatabaseNameLen)
	}
	return nil
}

// opaqueNameLen is the random part of a new tenant's database name: 20
// base32 characters, 100 bits.
const opaqueNameLen = 20

// NewDatabaseName returns a random name for a new tenant's database and
// role: "t_" and 20 lowercase letters and digits. Every tenant can list
// the databases and roles of its shard (pg_database, pg_roles,
// pg_stat_activity), so a name made from the tenant id would tell it who
// its neighbours are; this one says nothing. The catalog maps id to name.
func NewDatabaseName() string {
	return "t_" + strings.ToLower(rand.Text()[:opaqueNameLen])
}
