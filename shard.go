package silo

import (
	"net/url"
	"regexp"
	"strings"
	"time"
)

// ShardState is the state of a shard in the catalog.
type ShardState string

// Shard states. Only active shards receive new tenants; a draining shard is
// being emptied; a disabled one is kept out of placement and moves.
const (
	ShardActive   ShardState = "active"
	ShardDraining ShardState = "draining"
	ShardDisabled ShardState = "disabled"
)

// Valid reports whether s is a known shard state.
func (s ShardState) Valid() bool {
	switch s {
	case ShardActive, ShardDraining, ShardDisabled:
		return true
	}
	return false
}

// Shard is a PostgreSQL server that holds many tenant databases.
type Shard struct {
	Name   string
	DSN    string // connection string of a role that may create databases and roles; may hold a password
	Region string
	Weight int // relative capacity; placement divides the tenant count by it
	State  ShardState
	// TenantCount is the number of tenants placed on the shard that are not
	// purged. It is filled in by reads and ignored by writes.
	TenantCount int
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// Limits and defaults of shard fields.
const (
	MaxShardNameLen = 32
	MaxRegionLen    = 32
	DefaultRegion   = "default"
	DefaultWeight   = 100
	MaxWeight       = 10000
)

var (
	nameRE   = regexp.MustCompile(`^[a-z]([a-z0-9-]*[a-z0-9])?$`)
	regionRE = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)
)

// ValidateShardName checks a shard name against its grammar: 1 to 32
// lowercase letters, digits and hyphens, starting with a letter and not ending
// with a hyphen. It returns an EINVALID *Error naming the rule broken.
func ValidateShardName(name string) error {
	switch {
	case name == "":
		return Errorf(EINVALID, "shard name is required")
	case len(name) > MaxShardNameLen:
		return Errorf(EINVALID, "shard name %q is longer than %d characters", name, MaxShardNameLen)
	case !nameRE.MatchString(name):
		return Errorf(EINVALID, "shard name %q must be lowercase letters, digits and hyphens, start with a letter and not end with a hyphen", name)
	}
	return nil
}

// ValidateRegion checks a region name: 1 to 32 lowercase letters, digits and
// hyphens, starting with a letter. It returns an EINVALID *Error.
func ValidateRegion(region string) error {
	if region == "" || len(region) > MaxRegionLen || !regionRE.MatchString(region) {
		return Errorf(EINVALID, "region %q must be 1 to %d lowercase letters, digits and hyphens, starting with a letter", region, MaxRegionLen)
	}
	return nil
}

// ValidateWeight checks a shard weight: 1 to MaxWeight.
func ValidateWeight(weight int) error {
	if weight < 1 || weight > MaxWeight {
		return Errorf(EINVALID, "weight %d must be between 1 and %d", weight, MaxWeight)
	}
	return nil
}

var keywordPasswordRE = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// RedactDSN returns dsn with any password replaced by "xxxxx", in both URL
// form (postgres://user:secret@host/db, ?password=secret) and keyword form
// (host=h password=secret). Use it wherever a DSN is shown or logged.
func RedactDSN(dsn string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "(unparsable connection string)"
		}
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		if q := u.Query(); q.Has("password") || q.Has("sslpassword") {
			for _, k := range []string{"password", "sslpassword"} {
				if q.Has(k) {
					q.Set(k, "xxxxx")
				}
			}
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	return keywordPasswordRE.ReplaceAllString(dsn, "${1}xxxxx")
}
