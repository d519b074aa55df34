package shardmap

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
)

// WarmDatabase is a database made ahead of time on a shard from its
// template, waiting for a tenant.
type WarmDatabase struct {
	Shard         string
	Name          string
	SchemaVersion int64
	Ready         bool // false while it is being created (or was, by a server that died)
	CreatedAt     time.Time
}

// AddWarmDatabase records a warm database about to be created.
func (s *Store) AddWarmDatabase(ctx context.Context, shard, name string, version int64) error {
	_, err := s.pool.Exec(ctx, `
		INSERT INTO warm_databases (shard, name, schema_version, state) VALUES ($1, $2, $3, 'creating')`,
		shard, name, version)
	return CatalogError(err, "record warm database %q on shard %q", name, shard)
}

// WarmDatabaseReady marks a warm database created and claimable.
func (s *Store) WarmDatabaseReady(ctx context.Context, shard, name string) error {
	_, err := s.pool.Exec(ctx, `UPDATE warm_databases SET state = 'ready' WHERE shard = $1 AND name = $2`, shard, name)
	return CatalogError(err, "mark warm database %q ready", name)
}

// HoldWarmDatabase takes a ready warm database out of reach of claims (back
// to 'creating') so that it can be migrated in place; it reports false when
// a claim took it first.
func (s *Store) HoldWarmDatabase(ctx context.Context, shard, name string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `
		UPDATE warm_databases SET state = 'creating' WHERE shard = $1 AND name = $2 AND state = 'ready'`, shard, name)
	if err != nil {
		return false, CatalogError(err, "hold warm database %q", name)
	}
	return tag.RowsAffected() == 1, nil
}

// WarmDatabaseMigrated records a held warm database at a new schema
// version and makes it claimable again.
func (s *Store) WarmDatabaseMigrated(ctx context.Context, shard, name string, version int64) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE warm_databases SET state = 'ready', schema_version = $3 WHERE shard = $1 AND name = $2`, shard, name, version)
	return CatalogError(err, "record warm database %q at version %d", name, version)
}

// RemoveWarmDatabase forgets a warm database (after dropping it).
func (s *Store) RemoveWarmDatabase(ctx context.Context, shard, name string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM warm_databases WHERE shard = $1 AND name = $2`, shard, name)
	return CatalogError(err, "forget warm database %q", name)
}

// WarmDatabases lists a shard's warm databases.
func (s *Store) WarmDatabases(ctx context.Context, shard string) ([]WarmDatabase, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT shard, name, schema_version, state = 'ready', created_at
		FROM warm_databases WHERE shard = $1 ORDER BY created_at`, shard)
	if err != nil {
		return nil, CatalogError(err, "list warm databases of shard %q", shard)
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[WarmDatabase])
	return dbs, CatalogError(err, "list warm databases of shard %q", shard)
}

// ClaimWarmDatabase takes a ready warm database of the given schema version
// on shard for an operation, recording its name in the operation's
// parameters in the same transaction, so that a resumed operation finds it
// and no database is ever lost between the two. It returns "" when none is
// ready. Concurrent claims never get the same database.
func (s *Store) ClaimWarmDatabase(ctx context.Context, shard string, version int64, operationID string) (string, error) {
	var name string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// SKIP LOCKED lets concurrent creates take different databases
		// instead of queueing on the same row.
		err := tx.QueryRow(ctx, `
			DELETE FROM warm_databases
			WHERE (shard, name) = (
				SELECT shard, name FROM warm_databases
				WHERE shard = $1 AND schema_version = $2 AND state = 'ready'
				ORDER BY created_at
				LIMIT 1 FOR UPDATE SKIP LOCKED)
			RETURNING name`, shard, version).Scan(&name)
		if errors.Is(err, pgx.ErrNoRows) {
			name = ""
			return nil
		}
		if err != nil {
			return err
		}
		return s.SetOperationParams(ctx, tx, operationID, map[string]any{"warmDatabase": name})
	})
	if err != nil {
		return "", CatalogError(err, "claim a warm database on shard %q", shard)
	}
	return name, nil
}

// ShardFor is the placement rule: among the active shards (of region, when
// given), the one with the fewest live tenants per unit of weight. It
// returns EUNAVAILABLE when there is none, saying why.
//
// Within tx, ShardFor first takes a transaction-scoped advisory lock, so
// concurrent placements see each other's tenants instead of all choosing
// the same emptiest shard; the caller inserts its tenant in the same tx.
func (s *Store) ShardFor(ctx context.Context, tx pgx.Tx, region string) (*silo.Shard, error) {
	var db querier = s.pool
	if tx != nil {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('silo:placement'))`); err != nil {
			return nil, CatalogError(err, "choose a shard")
		}
		db = tx
	}
	// Counting per shard uses tenants_shard_state_id_idx; the fleet holds
	// tens of shards, not thousands.
	sh, err := s.scanShard(db.QueryRow(ctx, `
		SELECT `+shardColumns+` FROM shards s
		WHERE s.state = 'active' AND ($1 = '' OR s.region = $1)
		ORDER BY (SELECT count(*) FROM tenants t WHERE t.shard = s.name AND t.state <> 'purged')::float8 / s.weight, s.name
		LIMIT 1`, region))
	if errors.Is(err, pgx.ErrNoRows) {
		if region != "" {
			return nil, silo.Errorf(silo.EUNAVAILABLE, "no active shard in region %q can take a tenant", region)
		}
		return nil, silo.Errorf(silo.EUNAVAILABLE, "no active shard can take a tenant: add one, or activate a drained one")
	}
	if err != nil {
		return nil, CatalogError(err, "choose a shard")
	}
	return &sh, nil
}

// RegionExists reports whether any shard, in any state, serves region.
func (s *Store) RegionExists(ctx context.Context, region string) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM shards WHERE region = $1)`, region).Scan(&ok)
	return ok, CatalogError(err, "look up region %q", region)
}

// RetiredDatabase is a moved tenant's old database (and role, of the same
// name), kept on its old shard until DropAfter.
type RetiredDatabase struct {
	Shard, Name, TenantID string
	DropAfter             time.Time
}

// RetireDatabase records a database (and role) about to be renamed to name
// on shard, to be dropped after dropAfter.
func (s *Store) RetireDatabase(ctx context.Context, shard, name, tenantID string, dropAfter time.Time) error {
	_, err := s.pool.Exec(ctx, `
		INSERT INTO retired_databases (shard, name, tenant_id, drop_after) VALUES ($1, $2, $3, $4)
		ON CONFLICT (shard, name) DO NOTHING`, shard, name, tenantID, dropAfter)
	return CatalogError(err, "record retired database %q on shard %q", name, shard)
}

// ExpiredRetiredDatabases lists retired databases past their time, at most
// limit.
func (s *Store) ExpiredRetiredDatabases(ctx context.Context, now time.Time, limit int) ([]RetiredDatabase, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT shard, name, tenant_id, drop_after FROM retired_databases
		WHERE drop_after <= $1 ORDER BY drop_after LIMIT $2`, now, limit)
	if err != nil {
		return nil, CatalogError(err, "list retired databases")
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[RetiredDatabase])
	return dbs, CatalogError(err, "list retired databases")
}

// ForgetRetiredDatabase removes a retired database's record, once dropped,
// within tx (or on the pool when tx is nil).
func (s *Store) ForgetRetiredDatabase(ctx context.Context, tx pgx.Tx, shard, name string) error {
	var db querier = s.pool
	if tx != nil {
		db = tx
	}
	_, err := db.Exec(ctx, `DELETE FROM retired_databases WHERE shard = $1 AND name = $2`, shard, name)
	return CatalogError(err, "forget retired database %q", name)
}

// RetiredDatabasesOf lists a tenant's retired databases, on any shard.
func (s *Store) RetiredDatabasesOf(ctx context.Context, tenantID string) ([]RetiredDatabase, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT shard, name, tenant_id, drop_after FROM retired_databases
		WHERE tenant_id = $1 ORDER BY shard, name`, tenantID)
	if err != nil {
		return nil, CatalogError(err, "list retired databases of tenant %q", tenantID)
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[RetiredDatabase])
	return dbs, CatalogError(err, "list retired databases of tenant %q", tenantID)
}
