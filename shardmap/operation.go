package shardmap

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/silo-db/silo"
)

const operationColumns = `id::text, kind, tenant_id, state, steps, error_code, error, created_at, updated_at, finished_at`

func scanOperation(row pgx.Row) (silo.Operation, error) {
	var op silo.Operation
	var steps []byte
	err := row.Scan(&op.ID, &op.Kind, &op.TenantID, &op.State, &steps, &op.ErrorCode, &op.Error, &op.CreatedAt, &op.UpdatedAt, &op.FinishedAt)
	if err != nil {
		return op, err
	}
	return op, json.Unmarshal(steps, &op.Steps)
}

// NewOperation describes an operation to record with InsertOperation.
type NewOperation struct {
	ID             string // a UUID chosen by the caller
	Kind           silo.OperationKind
	TenantID       string
	Params         map[string]any // what a resumed run needs
	IdempotencyKey string
	RequestHash    string // what the key was first used for
	RecoveryJobID  int64
}

// InsertOperation records a running operation within tx. It returns
// ECONFLICT when the tenant already has a running operation or the
// idempotency key is taken.
func (s *Store) InsertOperation(ctx context.Context, tx pgx.Tx, n NewOperation) (*silo.Operation, error) {
	if n.Params == nil {
		n.Params = map[string]any{} // an object, so params || {...} merges
	}
	params, err := json.Marshal(n.Params)
	if err != nil {
		return nil, err
	}
	var key *string
	if n.IdempotencyKey != "" {
		key = &n.IdempotencyKey
	}
	op, err := scanOperation(tx.QueryRow(ctx, `
		INSERT INTO operations (id, kind, tenant_id, params, idempotency_key, request_hash, recovery_job_id)
		VALUES ($1, $2, $3, $4, $5, $6, NULLIF($7, 0))
		RETURNING `+operationColumns,
		n.ID, n.Kind, n.TenantID, params, key, n.RequestHash, n.RecoveryJobID))
	if err != nil {
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "23505" {
			if pgErr.ConstraintName == "operations_idempotency_key" {
				return nil, silo.Errorf(silo.ECONFLICT, "idempotency key %q is already in use", n.IdempotencyKey)
			}
			return nil, silo.Errorf(silo.ECONFLICT, "tenant %q has an operation in progress; wait for it to finish", n.TenantID)
		}
		return nil, catalogError(err, "record %s operation for tenant %q", n.Kind, n.TenantID)
	}
	return &op, nil
}

// GetOperation returns an operation by id, or ENOTFOUND.
func (s *Store) GetOperation(ctx context.Context, id string) (*silo.Operation, error) {
	op, err := scanOperation(s.pool.QueryRow(ctx, `
		SELECT `+operationColumns+` FROM operations WHERE id::text = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, silo.Errorf(silo.ENOTFOUND, "operation %q not found", id)
	}
	if err != nil {
		return nil, catalogError(err, "get operation %q", id)
	}
	return &op, nil
}

// OperationByKey returns the operation started with an idempotency key and
// the hash of the request it was first used for, or ENOTFOUND.
func (s *Store) OperationByKey(ctx context.Context, key string) (*silo.Operation, string, error) {
	var hash string
	row := s.pool.QueryRow(ctx, `SELECT `+operationColumns+`, request_hash FROM operations WHERE idempotency_key = $1`, key)
	var op silo.Operation
	var steps []byte
	err := row.Scan(&op.ID, &op.Kind, &op.TenantID, &op.State, &steps, &op.ErrorCode, &op.Error, &op.CreatedAt, &op.UpdatedAt, &op.FinishedAt, &hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, "", silo.Errorf(silo.ENOTFOUND, "no operation with idempotency key %q", key)
	}
	if err != nil {
		return nil, "", catalogError(err, "look up idempotency key")
	}
	if err := json.Unmarshal(steps, &op.Steps); err != nil {
		return nil, "", err
	}
	return &op, hash, nil
}

// OperationParams returns the parameters an operation was started with.
func (s *Store) OperationParams(ctx context.Context, id string) (map[string]any, error) {
	var raw []byte
	if err := s.pool.QueryRow(ctx, `SELECT params FROM operations WHERE id::text = $1`, id).Scan(&raw); err != nil {
		return nil, catalogError(err, "operation %q not found", id)
	}
	params := map[string]any{}
	return params, json.Unmarshal(raw, &params)
}

// SetOperationParam records one parameter of a running operation, such as
// the warm database it claimed, so a resumed run finds it.
func (s *Store) SetOperationParam(ctx context.Context, tx pgx.Tx, id, key string, value any) error {
	raw, err := json.Marshal(map[string]any{key: value})
	if err != nil {
		return err
	}
	var db querier = s.pool
	if tx != nil {
		db = tx
	}
	_, err = db.Exec(ctx, `UPDATE operations SET params = params || $2, updated_at = now() WHERE id::text = $1`, id, raw)
	return catalogError(err, "record parameter of operation %q", id)
}

// SaveSteps records an operation's steps as they progress.
func (s *Store) SaveSteps(ctx context.Context, id string, steps []silo.OperationStep) error {
	raw, err := json.Marshal(steps)
	if err != nil {
		return err
	}
	_, err = s.pool.Exec(ctx, `UPDATE operations SET steps = $2, updated_at = now() WHERE id::text = $1`, id, raw)
	return catalogError(err, "record steps of operation %q", id)
}

// FinishOperation marks an operation succeeded (cause nil) or failed, with
// cause's code and message, within tx (or on the pool when tx is nil).
func (s *Store) FinishOperation(ctx context.Context, tx pgx.Tx, id string, steps []silo.OperationStep, cause error) (*silo.Operation, error) {
	raw, err := json.Marshal(steps)
	if err != nil {
		return nil, err
	}
	state, code, msg := silo.OpSucceeded, "", ""
	if cause != nil {
		state, code, msg = silo.OpFailed, silo.ErrorCode(cause), silo.ErrorMessage(cause)
	}
	var db querier = s.pool
	if tx != nil {
		db = tx
	}
	op, err := scanOperation(db.QueryRow(ctx, `
		UPDATE operations
		SET state = $2, steps = $3, error_code = $4, error = $5, finished_at = now(), updated_at = now()
		WHERE id::text = $1
		RETURNING `+operationColumns, id, state, raw, code, msg))
	if err != nil {
		return nil, catalogError(err, "finish operation %q", id)
	}
	return &op, nil
}

// RecoveryJobID returns the River job that resumes an operation, 0 if none.
func (s *Store) RecoveryJobID(ctx context.Context, id string) (int64, error) {
	var job *int64
	if err := s.pool.QueryRow(ctx, `SELECT recovery_job_id FROM operations WHERE id::text = $1`, id).Scan(&job); err != nil {
		return 0, catalogError(err, "operation %q", id)
	}
	if job == nil {
		return 0, nil
	}
	return *job, nil
}

// RunningOperations returns the ids of running operations older than age
// seconds: those whose server may have died.
func (s *Store) RunningOperations(ctx context.Context, olderThanSeconds int) ([]string, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT id::text FROM operations
		WHERE state = 'running' AND updated_at < now() - make_interval(secs => $1)
		ORDER BY created_at`, olderThanSeconds)
	if err != nil {
		return nil, catalogError(err, "list running operations")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return ids, catalogError(err, "list running operations")
}
