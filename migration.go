package silo

import "time"

// Directions of a migration run.
const (
	MigrateUp   = "up"
	MigrateDown = "down"
)

// States of a migration run. A run prepares (templates are migrated and
// tenants listed), runs its canary wave, then every other tenant, and ends
// succeeded, failed, or stopped.
const (
	RunPreparing = "preparing"
	RunCanary    = "canary"
	RunRunning   = "running"
	RunSucceeded = "succeeded"
	RunFailed    = "failed"
	RunStopped   = "stopped"
)

// States of one tenant in a migration run.
const (
	RunTenantPending = "pending"
	RunTenantRunning = "running"
	RunTenantDone    = "done"
	RunTenantFailed  = "failed"
	RunTenantSkipped = "skipped" // the run ended before the tenant's turn
)

// MigrationRun is one run of tenant schema migrations across the fleet.
type MigrationRun struct {
	ID              string
	Direction       string // MigrateUp or MigrateDown
	TargetVersion   int64
	State           string
	Concurrency     int // tenants migrated at once, fleet-wide
	PerShard        int // tenants migrated at once on one shard
	Canary          int // tenants in the canary wave
	ContinueOnError bool
	Error           string // why the run failed or stopped
	CreatedBy       string
	CreatedAt       time.Time
	UpdatedAt       time.Time
	FinishedAt      *time.Time
	// Progress, by tenant.
	Total, Pending, Running, Done, Failed, Skipped int
	// ETA is the expected time left while the run is in progress, once a
	// tenant has finished; nil otherwise.
	ETA *time.Duration
}

// Active reports whether the run is still in progress.
func (r *MigrationRun) Active() bool {
	return r.State == RunPreparing || r.State == RunCanary || r.State == RunRunning
}

// MigrationFailure is a tenant whose last migration failed and that is not
// at the target version.
type MigrationFailure struct {
	TenantID   string
	Shard      string
	RunID      string
	Version    int64 // the tenant's version now
	Error      string
	SQLState   string
	FinishedAt time.Time
}

// ShardVersions is the histogram of tenant schema versions on one shard.
type ShardVersions struct {
	Shard    string
	Versions map[int64]int // version -> tenants
}

// MigrationStatus is the fleet's tenant schema at a glance.
type MigrationStatus struct {
	// LatestVersion is the highest version among the migration files.
	LatestVersion int64
	// TargetVersion is where the fleet is going: the last run's target,
	// or LatestVersion before any run.
	TargetVersion int64
	// Behind counts active and suspended tenants not at TargetVersion.
	Behind   int
	Shards   []ShardVersions
	Failures []MigrationFailure
	// Run is the run in progress, or else the latest one; nil before any.
	Run *MigrationRun
}

// SchemaDrift is a tenant whose schema differs from its shard's template.
type SchemaDrift struct {
	TenantID string
	Shard    string
	Version  int64 // the tenant's version, per the catalog
	// TemplateVersion is the template's; when it differs from Version, the
	// schemas are expected to differ by the migrations between them.
	TemplateVersion int64
	Missing         []string // in the template, not in the tenant
	Extra           []string // in the tenant, not in the template
	Error           string   // the tenant could not be inspected
}

// TemplateFingerprint is a shard template's schema, as drift is measured
// against it.
type TemplateFingerprint struct {
	Shard       string
	Version     int64
	Fingerprint string // hex SHA-256 of its schema's description
	Error       string // the template could not be inspected
}

// DriftReport lists the tenants whose schema differs from their shard's
// template.
type DriftReport struct {
	Checked   int
	Templates []TemplateFingerprint
	Drifted   []SchemaDrift
}
