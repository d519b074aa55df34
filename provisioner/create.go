package provisioner

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/engine"
	"github.com/silo-db/silo/migrations"
	"github.com/silo-db/silo/shardmap"
)

// MaxIdempotencyKeyLen bounds Idempotency-Key values, in characters.
const MaxIdempotencyKeyLen = 128

func (p *Provisioner) create(ctx context.Context, req CreateRequest, wait time.Duration) (Result, error) {
	if err := silo.ValidateTenantID(req.ID); err != nil {
		return Result{}, err
	}
	if utf8.RuneCountInString(req.IdempotencyKey) > MaxIdempotencyKeyLen {
		return Result{}, silo.Errorf(silo.EINVALID, "the idempotency key is longer than %d characters", MaxIdempotencyKeyLen)
	}
	limits := p.cfg.TenantLimits
	if req.Limits != nil {
		limits = *req.Limits
	}
	if err := limits.Validate(); err != nil {
		return Result{}, err
	}
	hash := requestHash("create", req.ID, req.Shard, req.Region, fmt.Sprint(limits.Connections), fmt.Sprint(limits.TempFileMB))
	if req.IdempotencyKey != "" {
		if res, ok, err := p.replay(ctx, req.IdempotencyKey, hash, wait); ok || err != nil {
			return res, err
		}
	}
	password := rand.Text() + rand.Text() // 52 base32 characters, 260 bits
	opID := newUUID()
	params := map[string]any{"shard": req.Shard, "region": req.Region, "operation": opID}
	err := p.store.Mutate(ctx, "tenant.create", "tenant/"+req.ID, params, func(tx pgx.Tx) error {
		shard, err := p.place(ctx, tx, req)
		if err != nil {
			return err
		}
		params["shard"], params["region"] = shard.Name, shard.Region
		if _, err := p.store.InsertTenant(ctx, tx, silo.Tenant{
			ID: req.ID, Shard: shard.Name, Database: silo.NewDatabaseName(), Region: shard.Region,
			State: silo.TenantProvisioning, Limits: limits,
		}, p.sealer.Seal([]byte(password), req.ID)); err != nil {
			return err
		}
		return p.eng.Insert(ctx, tx, shardmap.NewOperation{
			ID: opID, Kind: silo.OpCreate, TenantID: req.ID,
			IdempotencyKey: req.IdempotencyKey, RequestHash: hash,
		})
	})
	if err != nil {
		if req.IdempotencyKey != "" && silo.ErrorCode(err) == silo.ECONFLICT {
			// A concurrent request with the same key won the race.
			if res, ok, rerr := p.replay(ctx, req.IdempotencyKey, hash, wait); ok || rerr != nil {
				return res, rerr
			}
		}
		return Result{}, err
	}
	return p.run(ctx, opID, wait)
}

// replay answers a request whose idempotency key was seen before with the
// first request's operation. ok is false when the key is new.
func (p *Provisioner) replay(ctx context.Context, key, hash string, wait time.Duration) (Result, bool, error) {
	op, firstHash, err := p.store.OperationByKey(ctx, key)
	if silo.ErrorCode(err) == silo.ENOTFOUND {
		return Result{}, false, nil
	}
	if err != nil {
		return Result{}, true, err
	}
	if firstHash != hash {
		return Result{}, true, silo.Errorf(silo.ECONFLICT, "idempotency key %q was used for a different request", key)
	}
	res, err := p.await(ctx, op.ID, nil, wait)
	return res, true, err
}

// place chooses the shard of a new tenant, within the transaction that
// records it.
func (p *Provisioner) place(ctx context.Context, tx pgx.Tx, req CreateRequest) (*silo.Shard, error) {
	if req.Region != "" {
		if err := silo.ValidateRegion(req.Region); err != nil {
			return nil, err
		}
	}
	if req.Shard != "" {
		sh, err := p.store.GetShard(ctx, req.Shard)
		if silo.ErrorCode(err) == silo.ENOTFOUND {
			return nil, silo.Errorf(silo.EINVALID, "shard %q does not exist", req.Shard)
		}
		if err != nil {
			return nil, err
		}
		if sh.State != silo.ShardActive {
			return nil, silo.Errorf(silo.EINVALID, "shard %q is %s and takes no new tenants", sh.Name, sh.State)
		}
		if req.Region != "" && sh.Region != req.Region {
			return nil, silo.Errorf(silo.EINVALID, "shard %q is in region %q, not %q", sh.Name, sh.Region, req.Region)
		}
		return sh, nil
	}
	if req.Region != "" {
		ok, err := p.store.RegionExists(ctx, req.Region)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, silo.Errorf(silo.EINVALID, "no shard serves region %q", req.Region)
		}
	}
	return p.store.ShardFor(ctx, tx, req.Region)
}

func requestHash(parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(sum[:])
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// templates remembers, per shard, the version this server last saw the
// template at, so creates skip the check while the target stays there.
type templates struct {
	mu      sync.Mutex
	version map[string]int64
	setUp   map[string]bool // the template's role, grants and owner are set
}

// createPlan makes the tenant's role and database and hands the database to
// the role; its undo removes everything the forward steps may have made.
//
// With a warm unit (a prepared role and database), the steps rename both;
// otherwise they create the role and clone the template, and hand the
// template's objects over to the role.
//
// The activation is the pivot: once the tenant is active, its database is
// never dropped by an undo.
func (p *Provisioner) createPlan(op *silo.Operation, params map[string]any) (engine.Plan, error) {
	id := op.TenantID
	var name string // the tenant's database and role, from its row
	var t *silo.Tenant
	var sc *ShardAdmin
	load := func(ctx context.Context) error {
		if sc != nil {
			return nil
		}
		var err error
		if t, err = p.store.GetTenant(ctx, id); err != nil {
			return err
		}
		if err := silo.ValidateDatabaseName(t.Database); err != nil {
			return err
		}
		name = t.Database
		sc, err = p.shard(ctx, t.Shard)
		return err
	}
	warm, _ := params["warmDatabase"].(string)
	cloned, _ := params["cloned"].(bool)
	version := int64(0)
	if v, ok := params["schemaVersion"].(float64); ok {
		version = int64(v)
	}
	claimed := false // the role step took a whole warm unit
	return engine.Plan{
		Pivot: "activate",
		Steps: []engine.Step{
			{Name: "role", Run: func(ctx context.Context) error {
				if err := load(ctx); err != nil {
					return err
				}
				if warm == "" && p.cfg.WarmPoolSize > 0 {
					v, err := p.templateVersion(ctx, t.Shard)
					if err != nil {
						return err
					}
					if warm, err = p.store.ClaimWarmDatabase(ctx, t.Shard, v, op.ID); err != nil {
						return err
					}
					if warm != "" {
						p.refillSoon(ctx, t.Shard)
						version = v
					}
				}
				var err error
				claimed, err = p.ensureRole(ctx, sc, t.Shard, t, warm)
				return err
			}},
			{Name: "database", Run: func(ctx context.Context) error {
				if claimed {
					return nil // renamed with the role
				}
				if err := load(ctx); err != nil {
					return err
				}
				v, clone, err := p.ensureDatabase(ctx, sc, t, warm)
				if err != nil {
					return err
				}
				version = v
				if clone && !cloned {
					// A resumed run must still hand the template's objects over.
					cloned = true
					return p.store.SetOperationParams(ctx, nil, op.ID, map[string]any{"schemaVersion": v, "cloned": true})
				}
				return nil
			}},
			{Name: "ownership", Run: func(ctx context.Context) error {
				if claimed {
					return nil // a warm unit was handed over when it was made
				}
				if err := load(ctx); err != nil {
					return err
				}
				return p.handOver(ctx, sc, t.Shard, name, cloned)
			}},
			{Name: "activate", Run: func(ctx context.Context) error {
				cur, err := p.store.GetTenant(ctx, id)
				if err != nil {
					return err
				}
				if cur.State == silo.TenantActive {
					return nil
				}
				// A migration run may have moved the target since the
				// template or warm unit was made: born current all the same.
				target, err := p.targetVersion(ctx)
				if err != nil {
					return err
				}
				if version != target {
					if err := load(ctx); err != nil {
						return err
					}
					if version, err = p.migrateTenant(ctx, t, "", target); err != nil {
						return err
					}
				}
				cur.State, cur.SchemaVersion = silo.TenantActive, version
				return pgx.BeginFunc(ctx, p.catalog, func(tx pgx.Tx) error {
					if _, err := p.store.UpdateTenantTx(ctx, tx, *cur); err != nil {
						return err
					}
					return engine.MarkPivot(ctx, tx)
				})
			}},
		},
		Undo: []engine.Step{
			{Name: "undo:drop", Run: func(ctx context.Context) error {
				if err := load(ctx); err != nil {
					if silo.ErrorCode(err) == silo.ENOTFOUND {
						return nil // the tenant row is already gone
					}
					return err
				}
				if warm != "" {
					if err := p.dropDatabaseAndRole(ctx, sc, t.Shard, warm); err != nil {
						return err
					}
				}
				return p.dropDatabaseAndRole(ctx, sc, t.Shard, name)
			}},
			{Name: "undo:forget-tenant", Run: func(ctx context.Context) error {
				return p.store.DeleteProvisioningTenant(ctx, id)
			}},
		},
	}, nil
}

// ensureRole makes the tenant's login role: by creating it, or, when an
// interrupted run made it already, by bringing it to the same attributes
// and password. With a whole warm unit claimed (its role and database both
// still there), it renames both and sets the password in one transaction,
// and reports claimed: the fast path, one commit on the shard.
func (p *Provisioner) ensureRole(ctx context.Context, sc *ShardAdmin, shard string, t *silo.Tenant, warm string) (claimed bool, err error) {
	name := t.Database
	password, err := p.dialer.TenantPassword(ctx, t.ID)
	if err != nil {
		return false, err
	}
	verifier, err := shardmap.ScramVerifier(password)
	if err != nil {
		return false, err
	}
	var have, haveWarm, haveWarmDB, haveDB bool
	if err := sc.pool.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
		       EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2),
		       EXISTS (SELECT 1 FROM pg_database WHERE datname = $2),
		       EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name, warm).Scan(&have, &haveWarm, &haveWarmDB, &haveDB); err != nil {
		return false, shardmap.ShardError(err, shard)
	}
	// The verifier is base64 and '$:' only, but quote it as a literal all
	// the same: DDL takes no parameters.
	attrs := " LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD " + quoteLiteral(verifier) +
		fmt.Sprintf(" CONNECTION LIMIT %d", t.Limits.Connections)
	var stmts []string
	switch {
	case warm != "" && haveWarm && haveWarmDB && !have && !haveDB:
		claimed = true
		stmts = []string{
			"ALTER ROLE " + ident(warm) + " RENAME TO " + ident(name),
			"ALTER ROLE " + ident(name) + attrs,
			"ALTER DATABASE " + ident(warm) + " RENAME TO " + ident(name),
		}
	case have:
		stmts = []string{"ALTER ROLE " + ident(name) + attrs}
	case warm != "" && haveWarm:
		stmts = []string{"ALTER ROLE " + ident(warm) + " RENAME TO " + ident(name), "ALTER ROLE " + ident(name) + attrs}
	default:
		stmts = []string{"CREATE ROLE " + ident(name) + attrs}
		if !sc.superuser {
			// A CREATEROLE admin must be a member to give the role a database.
			stmts = append(stmts, "GRANT "+ident(name)+" TO CURRENT_USER")
		}
	}
	stmts = append(stmts, tempFileLimit(name, t.Limits))
	// Several statements in one simple-protocol call run as one transaction.
	if _, err := sc.pool.Exec(ctx, strings.Join(stmts, "; ")); err != nil {
		return false, shardmap.ShardError(err, shard)
	}
	return claimed, nil
}

// tempFileLimit is the statement that sets a role's temp_file_limit (a
// superuser-only setting, so the tenant cannot raise it in its sessions).
func tempFileLimit(role string, l silo.TenantLimits) string {
	if l.TempFileMB == -1 {
		return "ALTER ROLE " + ident(role) + " RESET temp_file_limit"
	}
	return "ALTER ROLE " + ident(role) + fmt.Sprintf(" SET temp_file_limit = '%dMB'", l.TempFileMB)
}

// ensureDatabase makes the tenant's database by renaming the claimed warm
// database or cloning the template, and returns its schema version and
// whether it was cloned (its objects then still belong to silo_owner).
func (p *Provisioner) ensureDatabase(ctx context.Context, sc *ShardAdmin, t *silo.Tenant, warm string) (int64, bool, error) {
	shard, name := t.Shard, t.Database
	var exists bool
	if err := sc.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return 0, false, shardmap.ShardError(err, shard)
	}
	if exists {
		// Made by an earlier attempt of this operation. A clone whose
		// server died before the ownership step still belongs to the
		// template's owner, so the tenant cannot read its version yet:
		// hand it over first (the next step would), then read.
		v, err := p.databaseVersion(ctx, t)
		if shardmap.SQLState(err) == "42501" && warm == "" { // insufficient_privilege
			if err := p.handOver(ctx, sc, shard, name, true); err != nil {
				return 0, false, err
			}
			v, err = p.databaseVersion(ctx, t)
		}
		return v, warm == "", err
	}
	version, err := p.templateVersion(ctx, shard)
	if err != nil {
		return 0, false, err
	}
	if warm != "" {
		_, err := sc.pool.Exec(ctx, "ALTER DATABASE "+ident(warm)+" RENAME TO "+ident(name))
		if err == nil {
			return version, false, nil
		}
		if shardmap.SQLState(err) != "3D000" { // invalid_catalog_name: the warm database is gone
			return 0, false, shardmap.ShardError(err, shard)
		}
		p.log.WarnContext(ctx, "claimed warm database is missing; cloning the template", "shard", shard, "database", warm)
	}
	return version, true, p.cloneTemplate(ctx, sc, shard, name)
}

// cloneTemplate creates a database from the shard's template, waiting out a
// template migration in progress (clones fail while anyone is connected).
func (p *Provisioner) cloneTemplate(ctx context.Context, sc *ShardAdmin, shard, name string) error {
	backoff := 50 * time.Millisecond
	for {
		_, err := sc.pool.Exec(ctx, "CREATE DATABASE "+ident(name)+" TEMPLATE "+ident(templateDB))
		if err == nil || shardmap.SQLState(err) == "42P04" { // duplicate_database: made meanwhile
			return nil
		}
		if shardmap.SQLState(err) != "55006" { // object_in_use: the template is busy
			return shardmap.ShardError(err, shard)
		}
		select {
		case <-ctx.Done():
			return shardmap.ShardError(ctx.Err(), shard)
		case <-time.After(backoff):
			backoff = min(2*backoff, time.Second)
		}
	}
}

// handOver gives database name and, when reassign is set, everything in it
// to the role of the same name, and shuts every other role out of it.
func (p *Provisioner) handOver(ctx context.Context, sc *ShardAdmin, shard, name string, reassign bool) error {
	for _, stmt := range []string{
		"ALTER DATABASE " + ident(name) + " OWNER TO " + ident(name),
		"REVOKE ALL ON DATABASE " + ident(name) + " FROM PUBLIC",
	} {
		if _, err := sc.pool.Exec(ctx, stmt); err != nil {
			return shardmap.ShardError(err, shard)
		}
	}
	if !reassign {
		return nil
	}
	// REASSIGN runs nothing of what it hands over: an admin session is
	// safe here, and the tenant has not reached its database yet.
	conn, err := p.adminDB(ctx, shard, name)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "REASSIGN OWNED BY "+ident(ownerRole)+" TO "+ident(name)); err != nil {
		return shardmap.ShardError(err, shard)
	}
	return nil
}

// databaseVersion reads the schema version of tenant t's database, as the
// tenant: the version table is the tenant's, and so is anything it has
// put in its place.
func (p *Provisioner) databaseVersion(ctx context.Context, t *silo.Tenant) (int64, error) {
	conn, err := p.asTenant(ctx, t, "")
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	v, err := migrations.TenantVersion(ctx, conn)
	return v, shardmap.ShardError(err, t.Shard)
}

// templateVersion returns the version of the shard's template, making or
// migrating it to the fleet's target version first if this server has not
// seen it there.
func (p *Provisioner) templateVersion(ctx context.Context, shard string) (int64, error) {
	target, err := p.targetVersion(ctx)
	if err != nil {
		return 0, err
	}
	p.tmpl.mu.Lock()
	v, known := p.tmpl.version[shard]
	p.tmpl.mu.Unlock()
	if known && v == target {
		return target, nil
	}
	if v, err = p.ensureTemplate(ctx, shard, target); err != nil {
		return 0, err
	}
	p.tmpl.mu.Lock()
	p.tmpl.version[shard] = v
	p.tmpl.mu.Unlock()
	return v, nil
}

// targetVersion returns the tenant schema version new tenants are born at:
// the target of the latest migration run, or the latest file's before the
// first.
func (p *Provisioner) targetVersion(ctx context.Context) (int64, error) {
	return migrations.TargetVersion(ctx, p.catalog, func() (int64, error) {
		v, err := migrations.LatestVersion(p.cfg.TenantMigrations)
		if err != nil {
			return 0, silo.WrapError(err, silo.EINTERNAL, "%v", err)
		}
		return v, nil
	})
}

// MigrateTemplate brings the shard's template and its warm units to
// version (up or down): a migration run calls it before it touches any
// tenant.
func (p *Provisioner) MigrateTemplate(ctx context.Context, shard string, version int64) error {
	v, err := p.ensureTemplate(ctx, shard, version)
	if err != nil {
		return err
	}
	p.tmpl.mu.Lock()
	p.tmpl.version[shard] = v
	p.tmpl.mu.Unlock()
	return p.migrateWarm(ctx, shard, v)
}

// migrateWarm migrates the shard's ready warm units made at another
// version in place, as their own roles: much cheaper than dropping and
// cloning them again. Each is held out of reach of claims meanwhile. A unit
// that fails is dropped; upkeep makes another.
func (p *Provisioner) migrateWarm(ctx context.Context, shard string, version int64) error {
	warm, err := p.store.WarmDatabases(ctx, shard)
	if err != nil {
		return err
	}
	sc, err := p.shard(ctx, shard)
	if err != nil {
		return err
	}
	for _, w := range warm {
		if !w.Ready || w.SchemaVersion == version {
			continue
		}
		held, err := p.store.HoldWarmDatabase(ctx, shard, w.Name)
		if err != nil {
			return err
		}
		if !held {
			continue // claimed meanwhile
		}
		v, err := p.migrateSiloDB(ctx, shard, w.Name, w.Name, version)
		if err != nil {
			p.log.WarnContext(ctx, "warm database not migrated; dropping it", "shard", shard, "database", w.Name, "err", err)
			if err := p.dropDatabaseAndRole(ctx, sc, shard, w.Name); err != nil {
				return err
			}
			if err := p.store.RemoveWarmDatabase(ctx, shard, w.Name); err != nil {
				return err
			}
			continue
		}
		if err := p.store.WarmDatabaseMigrated(ctx, shard, w.Name, v); err != nil {
			return err
		}
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
