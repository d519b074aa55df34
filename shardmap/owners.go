package shardmap

import (
	"context"
	"encoding/json"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
)

// Owners is everything the catalog says should be on the shards, read in
// one snapshot: what `silo check` compares each shard with.
type Owners struct {
	// Tenants are every tenant that is not purged.
	Tenants []silo.Tenant
	// Running are the operations in progress: what they name is in
	// flight, neither missing nor orphaned.
	Running []RunningOperation
	// Warm are the warm units of every shard, ready or being made.
	Warm []WarmDatabase
	// Retired are moved tenants' old databases waiting for their time.
	Retired []RetiredDatabase
	// Migrating are the tenants a migration job is migrating now: their
	// database may be at the new version before the catalog is.
	Migrating map[string]bool
}

// RunningOperation is an operation in progress and the names it may have
// made on a shard: its tenant's database and role, and the names recorded
// in its parameters (a claimed warm unit).
type RunningOperation struct {
	ID       string
	Kind     silo.OperationKind
	TenantID string
	// Database is the tenant's database and role, on any shard the
	// operation touches.
	Database string
	Params   map[string]any
}

// Owners reads the catalog's tenants, running operations, warm units,
// retired databases and tenants being migrated, in one read-only
// repeatable-read transaction, so that they agree with each other. ctx
// bounds the reads.
func (s *Store) Owners(ctx context.Context) (*Owners, error) {
	out := &Owners{Migrating: map[string]bool{}}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+tenantColumns+` FROM tenants WHERE state <> 'purged' ORDER BY id`)
		if err != nil {
			return err
		}
		if out.Tenants, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (silo.Tenant, error) { return scanTenant(r) }); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `
			SELECT o.id::text, o.kind, o.tenant_id, coalesce(t.database_name, ''), o.params
			FROM operations o LEFT JOIN tenants t ON t.id = o.tenant_id
			WHERE o.state = 'running' ORDER BY o.created_at`)
		if err != nil {
			return err
		}
		if out.Running, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (RunningOperation, error) {
			var op RunningOperation
			var params []byte
			if err := r.Scan(&op.ID, &op.Kind, &op.TenantID, &op.Database, &params); err != nil {
				return op, err
			}
			return op, json.Unmarshal(params, &op.Params)
		}); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT shard, name, schema_version, state = 'ready', created_at FROM warm_databases ORDER BY shard, name`)
		if err != nil {
			return err
		}
		if out.Warm, err = pgx.CollectRows(rows, pgx.RowToStructByPos[WarmDatabase]); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT shard, name, tenant_id, drop_after FROM retired_databases ORDER BY shard, name`)
		if err != nil {
			return err
		}
		if out.Retired, err = pgx.CollectRows(rows, pgx.RowToStructByPos[RetiredDatabase]); err != nil {
			return err
		}
		// A migration job marks its tenant running before it migrates, and
		// done in the transaction that writes the tenant's new version.
		rows, err = tx.Query(ctx, `SELECT DISTINCT tenant_id FROM migration_tenants WHERE state = 'running'`)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		for _, id := range ids {
			out.Migrating[id] = true
		}
		return err
	})
	if err != nil {
		return nil, CatalogError(err, "read what the catalog places on the shards")
	}
	return out, nil
}

// Claim is one thing in the catalog that names a database or role.
type Claim struct {
	What     string // "tenant", "operation", "warm unit" or "retired copy"
	Shard    string // where it places the name; "" for an operation, which may touch any
	TenantID string
	Detail   string // the tenant's state, or the operation's kind and id
}

// Claimants returns what in the catalog names database or role name now:
// a tenant that is not purged, a running operation (its tenant's database,
// or a name in its parameters), a warm unit or a retired copy. Nothing
// that Silo made is dropped while it has a claimant. ctx bounds the read.
func (s *Store) Claimants(ctx context.Context, name string) ([]Claim, error) {
	// One call per repair, not per check: a scan of the tenants is cheap at
	// that rate, running operations are few, and warm units and retired
	// copies are tens per shard.
	rows, err := s.pool.Query(ctx, `
		SELECT 'tenant', coalesce(shard, ''), id, state FROM tenants
		WHERE database_name = $1 AND state <> 'purged'
		UNION ALL
		SELECT 'operation', '', o.tenant_id, o.kind || ' ' || o.id::text
		FROM operations o LEFT JOIN tenants t ON t.id = o.tenant_id
		WHERE o.state = 'running'
		  AND (t.database_name = $1 OR EXISTS (SELECT 1 FROM jsonb_each_text(o.params) p WHERE p.value = $1))
		UNION ALL
		SELECT 'warm unit', shard, '', state FROM warm_databases WHERE name = $1
		UNION ALL
		SELECT 'retired copy', shard, tenant_id, '' FROM retired_databases WHERE name = $1`, name)
	if err != nil {
		return nil, CatalogError(err, "look up what names %q", name)
	}
	claims, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Claim])
	return claims, CatalogError(err, "look up what names %q", name)
}
