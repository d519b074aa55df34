package shardmap

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/silo-db/silo"
)

const shardColumns = `s.name, s.dsn_sealed, s.region, s.weight, s.state, s.created_at, s.updated_at,
	(SELECT count(*) FROM tenants t WHERE t.shard = s.name AND t.state <> 'purged')`

// scanShard reads a row of shardColumns and opens its DSN.
func (s *Store) scanShard(row pgx.Row) (silo.Shard, error) {
	var sh silo.Shard
	var sealed []byte
	if err := row.Scan(&sh.Name, &sealed, &sh.Region, &sh.Weight, &sh.State, &sh.CreatedAt, &sh.UpdatedAt, &sh.TenantCount); err != nil {
		return sh, err
	}
	var err error
	sh.DSN, err = s.openDSN(sh.Name, sealed)
	return sh, err
}

// dsnOwner is the owner a shard's DSN is sealed for, so that a sealed DSN
// copied to another shard's row, or to a tenant's, does not open.
func dsnOwner(name string) string { return "shard/" + name }

// sealDSN seals a shard's DSN for the catalog, which holds no other form.
func (s *Store) sealDSN(name, dsn string) ([]byte, error) {
	if s.sealer == nil {
		return nil, errNoSealer
	}
	return s.sealer.Seal([]byte(dsn), dsnOwner(name)), nil
}

func (s *Store) openDSN(name string, sealed []byte) (string, error) {
	if s.sealer == nil {
		return "", errNoSealer
	}
	if sealed == nil {
		return "", silo.Errorf(silo.EINTERNAL, "the DSN of shard %q is not sealed yet: `silo serve` seals plaintext DSNs when it starts", name)
	}
	plain, err := s.sealer.Open(sealed, dsnOwner(name))
	return string(plain), err
}

var errNoSealer = silo.Errorf(silo.EINTERNAL, "shardmap: the Store has no Sealer, so it can neither store nor read shard DSNs")

// CreateShard registers a shard after checking that its DSN connects and
// that its role may create databases and roles. Region and weight default to
// silo.DefaultRegion and silo.DefaultWeight; the state is always active.
// It returns EINVALID for a bad name, region, weight or DSN and for a shard
// that refuses the DSN's login (the message says why), EUNAVAILABLE for a
// shard that nothing answers at, and ECONFLICT when the name is taken. ctx bounds the whole call, including the probe.
func (s *Store) CreateShard(ctx context.Context, sh silo.Shard) (*silo.Shard, error) {
	if sh.Region == "" {
		sh.Region = silo.DefaultRegion
	}
	if sh.Weight == 0 {
		sh.Weight = silo.DefaultWeight
	}
	params := map[string]any{"name": sh.Name, "dsn": silo.RedactDSN(sh.DSN), "region": sh.Region, "weight": sh.Weight}
	var created silo.Shard
	err := s.Mutate(ctx, "shard.create", "shard/"+sh.Name, params, func(tx pgx.Tx) error {
		if err := validateShard(sh); err != nil {
			return err
		}
		// Fail on a taken name before spending a probe on it.
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM shards WHERE name = $1)`, sh.Name).Scan(&exists); err != nil {
			return CatalogError(err, "look up shard %q", sh.Name)
		}
		if exists {
			return silo.Errorf(silo.ECONFLICT, "shard %q already exists", sh.Name)
		}
		sealed, err := s.sealDSN(sh.Name, sh.DSN)
		if err != nil {
			return err
		}
		if err := s.probe(ctx, sh.DSN); err != nil {
			return err
		}
		row := tx.QueryRow(ctx, `
			WITH s AS (
				INSERT INTO shards (name, dsn_sealed, region, weight, state)
				VALUES ($1, $2, $3, $4, 'active')
				RETURNING *
			)
			SELECT s.name, s.dsn_sealed, s.region, s.weight, s.state, s.created_at, s.updated_at, 0 FROM s`,
			sh.Name, sealed, sh.Region, sh.Weight)
		if created, err = s.scanShard(row); err != nil {
			return CatalogError(err, "register shard %q", sh.Name)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("shard registered", "shard", created.Name, "dsn", silo.RedactDSN(created.DSN), "region", created.Region, "weight", created.Weight)
	return &created, nil
}

func validateShard(sh silo.Shard) error {
	if err := silo.ValidateShardName(sh.Name); err != nil {
		return err
	}
	if err := silo.ValidateRegion(sh.Region); err != nil {
		return err
	}
	if err := silo.ValidateWeight(sh.Weight); err != nil {
		return err
	}
	if strings.TrimSpace(sh.DSN) == "" {
		return silo.Errorf(silo.EINVALID, "dsn is required")
	}
	return nil
}

// probe connects to a shard and checks that its role can provision tenants.
// Errors never include the DSN's password: pgx redacts it from its own.
func (s *Store) probe(ctx context.Context, dsn string) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return silo.Errorf(silo.EINVALID, "dsn is not a valid PostgreSQL connection string: %s", redactErr(err, dsn))
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > s.probeTimeout {
		cfg.ConnectTimeout = s.probeTimeout
	}
	pctx, cancel := context.WithTimeout(ctx, s.probeTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(pctx, cfg)
	if err != nil {
		if _, answered := errors.AsType[*pgconn.PgError](err); !answered {
			// Nothing answered (refused, unreachable, timed out): the
			// request may be right and the shard not up yet, so it is the
			// shard that is unavailable, not the request that is invalid.
			return silo.Errorf(silo.EUNAVAILABLE, "cannot reach shard: %s", redactErr(err, dsn))
		}
		return silo.Errorf(silo.EINVALID, "cannot connect to shard: %s", redactErr(err, dsn))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var canProvision bool
	var user string
	err = conn.QueryRow(pctx, `
		SELECT rolname, rolsuper OR (rolcreatedb AND rolcreaterole)
		FROM pg_roles WHERE rolname = current_user`).Scan(&user, &canProvision)
	if err != nil {
		return silo.Errorf(silo.EINVALID, "cannot query shard: %s", redactErr(err, dsn))
	}
	if !canProvision {
		return silo.Errorf(silo.EINVALID, "role %q on the shard must be a superuser or have CREATEDB and CREATEROLE", user)
	}
	return nil
}

// redactErr returns err's text on one line without the DSN's password,
// should a driver ever echo it. pgx reports each connection attempt (with
// and without TLS) on a line of its own, often the same line twice; the
// repeats are dropped.
func redactErr(err error, dsn string) string {
	msg := err.Error()
	if cfg, perr := pgx.ParseConfig(dsn); perr == nil && cfg.Password != "" {
		msg = strings.ReplaceAll(msg, cfg.Password, "xxxxx")
	}
	var lines []string
	for _, l := range strings.Split(msg, "\n") {
		if l = strings.Join(strings.Fields(l), " "); l != "" && !slices.Contains(lines, l) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, " ")
}

// GetShard returns the shard with the given name, or ENOTFOUND.
func (s *Store) GetShard(ctx context.Context, name string) (*silo.Shard, error) {
	sh, err := s.scanShard(s.pool.QueryRow(ctx, `SELECT `+shardColumns+` FROM shards s WHERE s.name = $1`, name))
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, silo.Errorf(silo.ENOTFOUND, "shard %q not found", name)
		}
		return nil, CatalogError(err, "get shard %q", name)
	}
	return &sh, nil
}

// ShardDSN returns a shard's connection string, opened (whole: for Silo's
// own connections, never to be shown), or ENOTFOUND. It returns EINTERNAL
// when the sealed DSN does not open with the Store's Sealer.
func (s *Store) ShardDSN(ctx context.Context, name string) (string, error) {
	var sealed []byte
	err := s.pool.QueryRow(ctx, `SELECT dsn_sealed FROM shards WHERE name = $1`, name).Scan(&sealed)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", silo.Errorf(silo.ENOTFOUND, "shard %q not found", name)
	}
	if err != nil {
		return "", CatalogError(err, "get shard %q", name)
	}
	return s.openDSN(name, sealed)
}

// ListShards returns one page of shards ordered by name. It returns EINVALID
// for a bad limit or cursor.
func (s *Store) ListShards(ctx context.Context, p silo.Page) (silo.List[silo.Shard], error) {
	limit, after, err := page(p)
	if err != nil {
		return silo.List[silo.Shard]{}, err
	}
	rows, err := s.pool.Query(ctx, `SELECT `+shardColumns+` FROM shards s WHERE s.name > $1 ORDER BY s.name LIMIT $2`, after, limit+1)
	if err != nil {
		return silo.List[silo.Shard]{}, CatalogError(err, "list shards")
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (silo.Shard, error) { return s.scanShard(r) })
	if err != nil {
		return silo.List[silo.Shard]{}, CatalogError(err, "list shards")
	}
	return collectPage(items, limit, func(sh silo.Shard) string { return sh.Name }), nil
}

// SetShardState changes a shard's state: draining stops new placements and
// marks the shard for emptying, disabled keeps it out of placement and
// moves, active returns it to service. It returns ENOTFOUND for an unknown
// shard and EINVALID for an unknown state. Setting the current state again
// succeeds and changes nothing but the audit log.
func (s *Store) SetShardState(ctx context.Context, name string, state silo.ShardState) (*silo.Shard, error) {
	action := map[silo.ShardState]string{
		silo.ShardActive: "shard.activate", silo.ShardDraining: "shard.drain", silo.ShardDisabled: "shard.disable",
	}[state]
	if action == "" {
		action = "shard.set-state"
	}
	var out silo.Shard
	err := s.Mutate(ctx, action, "shard/"+name, map[string]any{"state": state}, func(tx pgx.Tx) error {
		if !state.Valid() {
			return silo.Errorf(silo.EINVALID, "state %q must be one of active, draining, disabled", state)
		}
		// Zero rows updated means unknown or already in that state: the
		// read below tells which.
		_, err := tx.Exec(ctx, `
			UPDATE shards SET state = $2, updated_at = now()
			WHERE name = $1 AND state <> $2`, name, state)
		if err != nil {
			return CatalogError(err, "set state of shard %q", name)
		}
		out, err = s.scanShard(tx.QueryRow(ctx, `SELECT `+shardColumns+` FROM shards s WHERE s.name = $1`, name))
		if errors.Is(err, pgx.ErrNoRows) {
			return silo.Errorf(silo.ENOTFOUND, "shard %q not found", name)
		}
		return CatalogError(err, "get shard %q", name)
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("shard state set", "shard", name, "state", state)
	return &out, nil
}

// DeleteShard removes a shard from the catalog. It returns ENOTFOUND for an
// unknown shard and ECONFLICT while the shard holds tenants that are not
// purged. The shard's PostgreSQL server is left as it is.
func (s *Store) DeleteShard(ctx context.Context, name string) error {
	err := s.Mutate(ctx, "shard.remove", "shard/"+name, nil, func(tx pgx.Tx) error {
		// The row lock conflicts with the key-share lock that a tenant
		// insert takes through its foreign key, so no tenant lands on the
		// shard between the count and the delete.
		var live int
		err := tx.QueryRow(ctx, `
			SELECT (SELECT count(*) FROM tenants t WHERE t.shard = s.name AND t.state <> 'purged')
			FROM shards s WHERE s.name = $1 FOR UPDATE`, name).Scan(&live)
		if errors.Is(err, pgx.ErrNoRows) {
			return silo.Errorf(silo.ENOTFOUND, "shard %q not found", name)
		}
		if err != nil {
			return CatalogError(err, "remove shard %q", name)
		}
		if live > 0 {
			return silo.Errorf(silo.ECONFLICT, "shard %q still holds %d tenants: drain it first", name, live)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM shards WHERE name = $1`, name); err != nil {
			return CatalogError(err, "remove shard %q", name)
		}
		return nil
	})
	if err == nil {
		s.log.Info("shard removed", "shard", name)
	}
	return err
}
