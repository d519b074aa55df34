package reconcile

import (
	"regexp"
	"strings"

	"github.com/silo-db/silo"
)

// The names Silo gives what it makes on a shard. Anything else on a shard
// (the admin's own databases and roles, other applications') is not
// Silo's: a check never reports it and a repair never touches it.
const (
	templateDB   = "silo_template" // each shard's template database
	ownerRole    = "silo_owner"    // owns the template's objects
	warmPrefix   = "silo_warm_"    // a warm unit: a database and a role
	retirePrefix = "silo_moved_"   // a moved tenant's old database and role
	scratchPref  = "silo_check_"   // a migration run's scratch copy of a template
	subPrefix    = "silo_sub_"     // a move's subscription role, on PostgreSQL 16+: silo_sub_<database>
	movePrefix   = "silo_move_"    // a move's slot and subscription: silo_move_<database>
	movePub      = "silo_move"     // a move's publication, in the tenant's database on the source
)

var (
	warmRE    = regexp.MustCompile(`^silo_warm_[a-z0-9]+$`)
	retiredRE = regexp.MustCompile(`^silo_moved_[a-z0-9]+_[a-z0-9_]+$`)
	scratchRE = regexp.MustCompile(`^silo_check_[0-9a-f]+$`)
)

// class is what a name on a shard is to Silo.
type class int

const (
	notSilo  class = iota
	tenant         // t_…: a tenant's database and login role
	template       // silo_template and silo_owner
	warm           // silo_warm_…
	retired        // silo_moved_…
	scratch        // silo_check_…
	subRole        // silo_sub_t_…
)

// classify says what a database or role name is to Silo, and for a move's
// subscription role the tenant database it serves.
func classify(name string) (class, string) {
	if len(name) > silo.MaxDatabaseNameLen {
		return notSilo, ""
	}
	switch {
	case name == templateDB || name == ownerRole:
		return template, ""
	case silo.ValidateDatabaseName(name) == nil:
		return tenant, name
	case warmRE.MatchString(name):
		return warm, ""
	case retiredRE.MatchString(name):
		return retired, ""
	case scratchRE.MatchString(name):
		return scratch, ""
	}
	if db, ok := strings.CutPrefix(name, subPrefix); ok && silo.ValidateDatabaseName(db) == nil {
		return subRole, db
	}
	return notSilo, ""
}

// moveObject returns the tenant database a move's slot or subscription
// serves (silo_move_<database>), or "" for a name that is not a move's.
func moveObject(name string) string {
	db, ok := strings.CutPrefix(name, movePrefix)
	if !ok || len(name) > silo.MaxDatabaseNameLen || silo.ValidateDatabaseName(db) != nil {
		return ""
	}
	return db
}
