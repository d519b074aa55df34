package shardmap

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
)

// SealPlaintextDSNs seals the DSN of every shard whose row still holds it in
// plaintext (a catalog upgraded from before migration 00007) and clears the
// plaintext, in one transaction audited as secrets.seal-dsns. It returns how
// many it sealed: none on a catalog that has no plaintext DSN left, without
// writing anything. Servers that run it at the same time wait for each
// other's row locks, and the later ones find nothing left to seal. ctx
// bounds the call.
func (s *Store) SealPlaintextDSNs(ctx context.Context) (int, error) {
	if s.sealer == nil {
		return 0, errNoSealer
	}
	var found bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM shards WHERE dsn IS NOT NULL)`).Scan(&found); err != nil {
		return 0, CatalogError(err, "look for plaintext shard DSNs")
	}
	if !found {
		return 0, nil
	}
	var names []string
	params := map[string]any{"key": s.sealer.KeyID()}
	err := s.Mutate(ctx, "secrets.seal-dsns", "secrets/shards", params, func(tx pgx.Tx) error {
		// After waiting for another server's locks, PostgreSQL checks the
		// WHERE again: the rows that server sealed are skipped.
		rows, err := tx.Query(ctx, `SELECT name, dsn FROM shards WHERE dsn IS NOT NULL ORDER BY name FOR UPDATE`)
		if err != nil {
			return CatalogError(err, "read plaintext shard DSNs")
		}
		type plain struct{ Name, DSN string }
		found, err := pgx.CollectRows(rows, pgx.RowToStructByPos[plain])
		if err != nil {
			return CatalogError(err, "read plaintext shard DSNs")
		}
		for _, p := range found {
			sealed, err := s.sealDSN(p.Name, p.DSN)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE shards SET dsn_sealed = $2, dsn = NULL WHERE name = $1`, p.Name, sealed); err != nil {
				return CatalogError(err, "seal the DSN of shard %q", p.Name)
			}
			names = append(names, p.Name)
		}
		params["shards"] = names // Mutate encodes params once fn returns
		return nil
	})
	if err != nil {
		return 0, err
	}
	if len(names) > 0 {
		s.log.Info("plaintext shard DSNs sealed", "shards", names, "key", s.sealer.KeyID())
		// The old row versions keep the plaintext until vacuumed. Best
		// effort: a role that does not own the table may not vacuum it, and
		// autovacuum gets there in the end.
		if _, err := s.pool.Exec(ctx, `VACUUM shards`); err != nil {
			s.log.Warn("vacuum shards after sealing their DSNs", "err", err)
		}
	}
	return len(names), nil
}

// ResealCount counts the sealed values of one kind that Reseal saw.
type ResealCount struct {
	Moved   int // sealed again under the current key (a plaintext DSN: sealed)
	Current int // already under the current key: left as they were
	Failed  int // did not open: left as they were
}

// ResealResult is what Reseal did.
type ResealResult struct {
	KeyID           string // the current key's id, which every moved value is now under
	TenantPasswords ResealCount
	ShardDSNs       ResealCount
	// Failures say which values did not open and why, the first
	// maxResealFailures of them; they never include a secret.
	Failures []string
}

const (
	// DefaultResealBatch is how many rows Reseal reads, and locks, at once.
	DefaultResealBatch = 500
	maxResealFailures  = 20
)

// sealedColumn is a catalog column of sealed values, and how to find each
// value's owner. Its names are constants, never input.
type sealedColumn struct {
	table, key, column string
	owner              func(key string) string
	count              func(*ResealResult) *ResealCount
}

var sealedColumns = []sealedColumn{
	{table: "tenants", key: "id", column: "password_sealed",
		owner: func(id string) string { return id },
		count: func(r *ResealResult) *ResealCount { return &r.TenantPasswords }},
	{table: "shards", key: "name", column: "dsn_sealed",
		owner: dsnOwner,
		count: func(r *ResealResult) *ResealCount { return &r.ShardDSNs }},
}

// Reseal seals every secret in the catalog (tenant passwords and shard DSNs)
// under the Sealer's current key, batchSize rows at a time
// (DefaultResealBatch when 0 or less), after sealing any plaintext DSN left.
// Values already under the current key are left alone, so Reseal can run
// again at any time, and next to servers at work: each batch locks only its
// own rows, for one short transaction, which also writes its audit entry
// (secrets.reseal, with the range of keys and the counts). A value that
// does not open, because it was sealed under a key the Sealer lacks, is
// counted as failed, named in Failures, and left as it is; the others go on.
// On a catalog error Reseal stops and returns what it finished with the
// error. ctx bounds the whole run.
func (s *Store) Reseal(ctx context.Context, batchSize int) (ResealResult, error) {
	if s.sealer == nil {
		return ResealResult{}, errNoSealer
	}
	if batchSize <= 0 {
		batchSize = DefaultResealBatch
	}
	res := ResealResult{KeyID: s.sealer.KeyID()}
	n, err := s.SealPlaintextDSNs(ctx)
	res.ShardDSNs.Moved += n
	if err != nil {
		return res, err
	}
	for _, c := range sealedColumns {
		if err := s.resealColumn(ctx, c, batchSize, &res); err != nil {
			return res, err
		}
	}
	s.log.Info("secrets resealed", "key", res.KeyID,
		"tenant_passwords", res.TenantPasswords, "shard_dsns", res.ShardDSNs)
	return res, nil
}

// resealColumn walks one column in key order, batch by batch. Reading a
// batch takes no lock; only the rows that need it are resealed, in a
// transaction of their own.
func (s *Store) resealColumn(ctx context.Context, c sealedColumn, batchSize int, res *ResealResult) error {
	count := c.count(res)
	read := fmt.Sprintf(`SELECT %[2]s, %[3]s FROM %[1]s WHERE %[2]s > $1 AND %[3]s IS NOT NULL ORDER BY %[2]s LIMIT $2`, c.table, c.key, c.column)
	after := ""
	for {
		rows, err := s.pool.Query(ctx, read, after, batchSize)
		if err != nil {
			return CatalogError(err, "read the sealed values of %s", c.table)
		}
		batch, err := pgx.CollectRows(rows, pgx.RowToStructByPos[sealedValue])
		if err != nil {
			return CatalogError(err, "read the sealed values of %s", c.table)
		}
		var stale []string
		for _, v := range batch {
			if s.sealer.IsCurrent(v.Sealed) {
				count.Current++
			} else {
				stale = append(stale, v.Key)
			}
		}
		if len(stale) > 0 {
			if err := s.resealRows(ctx, c, stale, res); err != nil {
				return err
			}
		}
		if len(batch) < batchSize {
			return nil
		}
		after = batch[len(batch)-1].Key
	}
}

type sealedValue struct {
	Key    string
	Sealed []byte
}

// resealRows reseals the values of the rows with the given keys, under row
// locks, and audits the batch in the same transaction.
func (s *Store) resealRows(ctx context.Context, c sealedColumn, keys []string, res *ResealResult) error {
	count := c.count(res)
	params := map[string]any{"key": res.KeyID, "first": keys[0], "last": keys[len(keys)-1]}
	var batch ResealCount
	var failures []string
	err := s.Mutate(ctx, "secrets.reseal", "secrets/"+c.table, params, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, fmt.Sprintf(`
			SELECT %[2]s, %[3]s FROM %[1]s WHERE %[2]s = ANY($1) AND %[3]s IS NOT NULL
			ORDER BY %[2]s FOR UPDATE`, c.table, c.key, c.column), keys)
		if err != nil {
			return CatalogError(err, "lock the sealed values of %s", c.table)
		}
		locked, err := pgx.CollectRows(rows, pgx.RowToStructByPos[sealedValue])
		if err != nil {
			return CatalogError(err, "lock the sealed values of %s", c.table)
		}
		var newKeys []string
		var newValues [][]byte
		for _, v := range locked {
			out, moved, err := s.sealer.Reseal(v.Sealed, c.owner(v.Key))
			switch {
			case err != nil:
				batch.Failed++
				failures = append(failures, silo.ErrorMessage(err))
			case moved:
				batch.Moved++
				newKeys, newValues = append(newKeys, v.Key), append(newValues, out)
			default: // resealed since the batch was read
				batch.Current++
			}
		}
		_, err = tx.Exec(ctx, fmt.Sprintf(`
			UPDATE %[1]s t SET %[3]s = v.sealed
			FROM unnest($1::text[], $2::bytea[]) AS v(key, sealed)
			WHERE t.%[2]s = v.key`, c.table, c.key, c.column), newKeys, newValues)
		if err != nil {
			return CatalogError(err, "reseal the values of %s", c.table)
		}
		params["moved"], params["current"], params["failed"] = batch.Moved, batch.Current, batch.Failed
		return nil
	})
	if err != nil {
		return err
	}
	count.Moved += batch.Moved
	count.Current += batch.Current
	count.Failed += batch.Failed
	for _, f := range failures {
		if len(res.Failures) < maxResealFailures {
			res.Failures = append(res.Failures, f)
		}
	}
	return nil
}
