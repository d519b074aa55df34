package shardmap

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
)

const tenantColumns = `id, shard, database_name, region, state, schema_version, epoch, created_at, updated_at, deleted_at, purge_after, connection_limit, temp_file_limit_mb`

func scanTenant(row pgx.Row) (silo.Tenant, error) {
	var t silo.Tenant
	var shard *string // NULL on a tombstone whose shard was removed
	err := row.Scan(&t.ID, &shard, &t.Database, &t.Region, &t.State, &t.SchemaVersion, &t.Epoch, &t.CreatedAt, &t.UpdatedAt, &t.DeletedAt, &t.PurgeAfter,
		&t.Limits.Connections, &t.Limits.TempFileMB)
	if shard != nil {
		t.Shard = *shard
	}
	return t, err
}

// TenantFilter narrows ListTenants; empty fields match everything.
type TenantFilter struct {
	Shard  string
	State  silo.TenantState
	Region string
	Prefix string // of the id
}

// CreateTenant records a tenant in the catalog with epoch 1. It records only
// the directory entry: the provisioner makes the database. It returns
// EINVALID for a bad id, state or unknown shard and ECONFLICT when the id is
// taken (tombstones of purged tenants keep their ids).
func (s *Store) CreateTenant(ctx context.Context, t silo.Tenant) (*silo.Tenant, error) {
	params := map[string]any{"shard": t.Shard, "database": t.Database, "region": t.Region, "state": t.State}
	var out *silo.Tenant
	err := s.Mutate(ctx, "tenant.create", "tenant/"+t.ID, params, func(tx pgx.Tx) error {
		var err error
		out, err = s.InsertTenant(ctx, tx, t, nil)
		return err
	})
	return out, err
}

// InsertTenant is CreateTenant within the caller's transaction, with the
// tenant role's sealed password, and without an audit entry of its own.
func (s *Store) InsertTenant(ctx context.Context, tx pgx.Tx, t silo.Tenant, sealedPassword []byte) (*silo.Tenant, error) {
	if t.Limits == (silo.TenantLimits{}) {
		t.Limits = silo.DefaultTenantLimits() // a tenant made before limits, or without any
	}
	if err := validateTenant(t); err != nil {
		return nil, err
	}
	out, err := scanTenant(tx.QueryRow(ctx, `
		INSERT INTO tenants (id, shard, database_name, region, state, schema_version, password_sealed, connection_limit, temp_file_limit_mb)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		RETURNING `+tenantColumns,
		t.ID, t.Shard, t.Database, t.Region, t.State, t.SchemaVersion, sealedPassword, t.Limits.Connections, t.Limits.TempFileMB))
	if err != nil {
		err = CatalogError(err, "create tenant %q", t.ID)
		if silo.ErrorCode(err) == silo.ECONFLICT {
			return nil, silo.Errorf(silo.ECONFLICT, "tenant %q already exists", t.ID)
		}
		return nil, err
	}
	return &out, nil
}

// TenantSecret returns the tenant role's sealed password, or ENOTFOUND
// when the tenant is unknown or has none (a tombstone).
func (s *Store) TenantSecret(ctx context.Context, id string) ([]byte, error) {
	var sealed []byte
	err := s.pool.QueryRow(ctx, `SELECT password_sealed FROM tenants WHERE id = $1`, id).Scan(&sealed)
	if err != nil {
		return nil, CatalogError(err, "tenant %q not found", id)
	}
	if sealed == nil {
		return nil, silo.Errorf(silo.ENOTFOUND, "tenant %q has no credentials", id)
	}
	return sealed, nil
}

// ExpiredTenants returns up to limit ids of deleted tenants whose grace
// period ended before now.
func (s *Store) ExpiredTenants(ctx context.Context, now time.Time, limit int) ([]string, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT id FROM tenants
		WHERE state = 'deleted' AND purge_after < $1
		ORDER BY purge_after LIMIT $2`, now, limit)
	if err != nil {
		return nil, CatalogError(err, "list expired tenants")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return ids, CatalogError(err, "list expired tenants")
}

func validateTenant(t silo.Tenant) error {
	if err := silo.ValidateTenantID(t.ID); err != nil {
		return err
	}
	if !t.State.Valid() {
		return silo.Errorf(silo.EINVALID, "tenant state %q is unknown", t.State)
	}
	if t.State != silo.TenantPurged && t.Shard == "" {
		return silo.Errorf(silo.EINVALID, "tenant %q needs a shard", t.ID)
	}
	if err := silo.ValidateDatabaseName(t.Database); err != nil {
		return err
	}
	if err := t.Limits.Validate(); err != nil {
		return err
	}
	return silo.ValidateRegion(t.Region)
}

// GetTenant returns the tenant with the given id, or ENOTFOUND.
func (s *Store) GetTenant(ctx context.Context, id string) (*silo.Tenant, error) {
	t, err := scanTenant(s.pool.QueryRow(ctx, `SELECT `+tenantColumns+` FROM tenants WHERE id = $1`, id))
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, silo.Errorf(silo.ENOTFOUND, "tenant %q not found", id)
		}
		return nil, CatalogError(err, "get tenant %q", id)
	}
	return &t, nil
}

// ListTenants returns one page of tenants matching f, ordered by id. It
// returns EINVALID for a bad limit or cursor.
func (s *Store) ListTenants(ctx context.Context, f TenantFilter, p silo.Page) (silo.List[silo.Tenant], error) {
	limit, after, err := page(p)
	if err != nil {
		return silo.List[silo.Tenant]{}, err
	}
	// Each filter is either empty or an equality; the (shard, state, id),
	// (region, id) and (state, id) indexes serve the common combinations.
	// The prefix is a filter on rows read in id order, which stop at the
	// page's end: a search from the console, not a hot path.
	rows, err := s.pool.Query(ctx, `
		SELECT `+tenantColumns+` FROM tenants
		WHERE id > $1
		  AND ($2 = '' OR shard = $2)
		  AND ($3 = '' OR state = $3)
		  AND ($4 = '' OR region = $4)
		  AND ($6 = '' OR starts_with(id, $6))
		ORDER BY id LIMIT $5`,
		after, f.Shard, string(f.State), f.Region, limit+1, f.Prefix)
	if err != nil {
		return silo.List[silo.Tenant]{}, CatalogError(err, "list tenants")
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (silo.Tenant, error) { return scanTenant(r) })
	if err != nil {
		return silo.List[silo.Tenant]{}, CatalogError(err, "list tenants")
	}
	return collectPage(items, limit, func(t silo.Tenant) string { return t.ID }), nil
}

// UpdateTenant writes t's shard, database, region, state, schema version and
// deletion times if the catalog still holds t.Epoch (a purged tenant loses
// its sealed password), and returns the tenant with its new
// epoch. It returns ENOTFOUND for an unknown tenant, ECONFLICT when the
// tenant changed since t was read, and EINVALID for bad fields.
func (s *Store) UpdateTenant(ctx context.Context, t silo.Tenant) (*silo.Tenant, error) {
	params := map[string]any{"shard": t.Shard, "database": t.Database, "region": t.Region, "state": t.State, "schemaVersion": t.SchemaVersion, "epoch": t.Epoch}
	var out *silo.Tenant
	err := s.Mutate(ctx, "tenant.update", "tenant/"+t.ID, params, func(tx pgx.Tx) error {
		var err error
		out, err = s.UpdateTenantTx(ctx, tx, t)
		return err
	})
	return out, err
}

// UpdateTenantTx is UpdateTenant within the caller's transaction (or on the
// pool when tx is nil), without an audit entry of its own: operations record
// their steps in the operation and audit the request.
func (s *Store) UpdateTenantTx(ctx context.Context, tx pgx.Tx, t silo.Tenant) (*silo.Tenant, error) {
	if t.Limits == (silo.TenantLimits{}) {
		t.Limits = silo.DefaultTenantLimits() // a tenant made before limits, or without any
	}
	if err := validateTenant(t); err != nil {
		return nil, err
	}
	var db querier = s.pool
	if tx != nil {
		db = tx
	}
	var shard any = t.Shard
	if t.Shard == "" {
		shard = nil
	}
	out, err := scanTenant(db.QueryRow(ctx, `
		UPDATE tenants
		SET shard = $3, database_name = $4, region = $5, state = $6, schema_version = $7,
		    deleted_at = $8, purge_after = $9, connection_limit = $10, temp_file_limit_mb = $11,
		    -- a tombstone keeps no credentials
		    password_sealed = CASE WHEN $6 = 'purged' THEN NULL ELSE password_sealed END,
		    epoch = epoch + 1, updated_at = now()
		WHERE id = $1 AND epoch = $2
		RETURNING `+tenantColumns,
		t.ID, t.Epoch, shard, t.Database, t.Region, t.State, t.SchemaVersion, t.DeletedAt, t.PurgeAfter, t.Limits.Connections, t.Limits.TempFileMB))
	if err == nil {
		return &out, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return nil, CatalogError(err, "update tenant %q", t.ID)
	}
	var epoch int64
	err = db.QueryRow(ctx, `SELECT epoch FROM tenants WHERE id = $1`, t.ID).Scan(&epoch)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, silo.Errorf(silo.ENOTFOUND, "tenant %q not found", t.ID)
	}
	if err != nil {
		return nil, CatalogError(err, "update tenant %q", t.ID)
	}
	return nil, silo.Errorf(silo.ECONFLICT, "tenant %q changed since it was read (epoch %d, now %d)", t.ID, t.Epoch, epoch)
}

// DeleteProvisioningTenant removes the catalog row of a tenant whose create
// was rolled back, so its id can be used again. A tenant in any other state
// is left alone.
func (s *Store) DeleteProvisioningTenant(ctx context.Context, id string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM tenants WHERE id = $1 AND state = 'provisioning'`, id)
	return CatalogError(err, "forget tenant %q", id)
}
