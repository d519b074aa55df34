package shardmap

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
)

const tenantColumns = `id, shard, database_name, region, state, schema_version, epoch, created_at, updated_at`

func scanTenant(row pgx.Row) (silo.Tenant, error) {
	var t silo.Tenant
	var shard *string // NULL on a tombstone whose shard was removed
	err := row.Scan(&t.ID, &shard, &t.Database, &t.Region, &t.State, &t.SchemaVersion, &t.Epoch, &t.CreatedAt, &t.UpdatedAt)
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
}

// CreateTenant records a tenant in the catalog with epoch 1. It records only
// the directory entry: the provisioner makes the database. It returns
// EINVALID for a bad id, state or unknown shard and ECONFLICT when the id is
// taken (tombstones of purged tenants keep their ids).
func (s *Store) CreateTenant(ctx context.Context, t silo.Tenant) (*silo.Tenant, error) {
	params := map[string]any{"shard": t.Shard, "database": t.Database, "region": t.Region, "state": t.State}
	var out silo.Tenant
	err := s.mutate(ctx, "tenant.create", "tenant/"+t.ID, params, func(tx pgx.Tx) error {
		if err := validateTenant(t); err != nil {
			return err
		}
		var err error
		out, err = scanTenant(tx.QueryRow(ctx, `
			INSERT INTO tenants (id, shard, database_name, region, state, schema_version)
			VALUES ($1, $2, $3, $4, $5, $6)
			RETURNING `+tenantColumns,
			t.ID, t.Shard, t.Database, t.Region, t.State, t.SchemaVersion))
		if err != nil {
			err = catalogError(err, "create tenant %q", t.ID)
			if silo.ErrorCode(err) == silo.ECONFLICT {
				return silo.Errorf(silo.ECONFLICT, "tenant %q already exists", t.ID)
			}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
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
	if t.Database == "" {
		return silo.Errorf(silo.EINVALID, "tenant %q needs a database name", t.ID)
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
		return nil, catalogError(err, "get tenant %q", id)
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
	rows, err := s.pool.Query(ctx, `
		SELECT `+tenantColumns+` FROM tenants
		WHERE id > $1
		  AND ($2 = '' OR shard = $2)
		  AND ($3 = '' OR state = $3)
		  AND ($4 = '' OR region = $4)
		ORDER BY id LIMIT $5`,
		after, f.Shard, string(f.State), f.Region, limit+1)
	if err != nil {
		return silo.List[silo.Tenant]{}, catalogError(err, "list tenants")
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (silo.Tenant, error) { return scanTenant(r) })
	if err != nil {
		return silo.List[silo.Tenant]{}, catalogError(err, "list tenants")
	}
	return collectPage(items, limit, func(t silo.Tenant) string { return t.ID }), nil
}

// UpdateTenant writes t's shard, database, region, state and schema version
// if the catalog still holds t.Epoch, and returns the tenant with its new
// epoch. It returns ENOTFOUND for an unknown tenant, ECONFLICT when the
// tenant changed since t was read, and EINVALID for bad fields.
func (s *Store) UpdateTenant(ctx context.Context, t silo.Tenant) (*silo.Tenant, error) {
	params := map[string]any{"shard": t.Shard, "database": t.Database, "region": t.Region, "state": t.State, "schemaVersion": t.SchemaVersion, "epoch": t.Epoch}
	var out silo.Tenant
	err := s.mutate(ctx, "tenant.update", "tenant/"+t.ID, params, func(tx pgx.Tx) error {
		if err := validateTenant(t); err != nil {
			return err
		}
		var shard any = t.Shard
		if t.Shard == "" {
			shard = nil
		}
		var err error
		out, err = scanTenant(tx.QueryRow(ctx, `
			UPDATE tenants
			SET shard = $3, database_name = $4, region = $5, state = $6, schema_version = $7,
			    epoch = epoch + 1, updated_at = now()
			WHERE id = $1 AND epoch = $2
			RETURNING `+tenantColumns,
			t.ID, t.Epoch, shard, t.Database, t.Region, t.State, t.SchemaVersion))
		if !errors.Is(err, pgx.ErrNoRows) {
			return catalogError(err, "update tenant %q", t.ID)
		}
		var epoch int64
		err = tx.QueryRow(ctx, `SELECT epoch FROM tenants WHERE id = $1`, t.ID).Scan(&epoch)
		if errors.Is(err, pgx.ErrNoRows) {
			return silo.Errorf(silo.ENOTFOUND, "tenant %q not found", t.ID)
		}
		if err != nil {
			return catalogError(err, "update tenant %q", t.ID)
		}
		return silo.Errorf(silo.ECONFLICT, "tenant %q changed since it was read (epoch %d, now %d)", t.ID, t.Epoch, epoch)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}
