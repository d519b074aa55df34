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
		return nil, CatalogError(err, "record %s operation for tenant %q", n.Kind, n.TenantID)
	}
	return &op, nil
}

// isUUID reports whether id is a UUID as PostgreSQL reads one: operations
// are looked up by their uuid key, and an id that is none names nothing.
func isUUID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i, c := range id {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F'):
		default:
			return false
		}
	}
	return true
}

// GetOperation returns an operation by id, or ENOTFOUND.
func (s *Store) GetOperation(ctx context.Context, id string) (*silo.Operation, error) {
	if !isUUID(id) {
		return nil, silo.Errorf(silo.ENOTFOUND, "operation %q not found", id)
	}
	op, err := scanOperation(s.pool.QueryRow(ctx, `
		SELECT `+operationColumns+` FROM operations WHERE id = $1::uuid`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, silo.Errorf(silo.ENOTFOUND, "operation %q not found", id)
	}
	if err != nil {
		return nil, CatalogError(err, "get operation %q", id)
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
		return nil, "", CatalogError(err, "look up idempotency key")
	}
	if err := json.Unmarshal(steps, &op.Steps); err != nil {
		return nil, "", err
	}
	return &op, hash, nil
}

// OperationParams returns the parameters an operation was started with.
func (s *Store) OperationParams(ctx context.Context, id string) (map[string]any, error) {
	if !isUUID(id) {
		return nil, silo.Errorf(silo.ENOTFOUND, "operation %q not found", id)
	}
	var raw []byte
	if err := s.pool.QueryRow(ctx, `SELECT params FROM operations WHERE id = $1::uuid`, id).Scan(&raw); err != nil {
		return nil, CatalogError(err, "operation %q not found", id)
	}
	params := map[string]any{}
	return params, json.Unmarshal(raw, &params)
}

// SetOperationParams records parameters of a running operation, such as
// the warm database it claimed, so a resumed run finds them.
func (s *Store) SetOperationParams(ctx context.Context, tx pgx.Tx, id string, params map[string]any) error {
	raw, err := json.Marshal(params)
	if err != nil {
		return err
	}
	var db querier = s.pool
	if tx != nil {
		db = tx
	}
	_, err = db.Exec(ctx, `UPDATE operations SET params = params || $2, updated_at = now() WHERE id = $1::uuid`, id, raw)
	return CatalogError(err, "record parameter of operation %q", id)
}

// SaveSteps records an operation's steps as they progress, if the run
// that holds it is token (any run when token is ""): a run that lost the
// operation to another records nothing.
func (s *Store) SaveSteps(ctx context.Context, id, token string, steps []silo.OperationStep) error {
	raw, err := json.Marshal(steps)
	if err != nil {
		return err
	}
	_, err = s.pool.Exec(ctx, `
		UPDATE operations SET steps = $2, updated_at = now()
		WHERE id = $1::uuid AND state = 'running' AND ($3 = '' OR run_token = nullif($3, '')::uuid)`, id, raw, token)
	return CatalogError(err, "record steps of operation %q", id)
}

// FinishedOperation is an operation as FinishOperation left it, with what
// its server needs to tidy up.
type FinishedOperation struct {
	silo.Operation
	Params        map[string]any
	RecoveryJobID int64
}

// FinishOperation marks a running operation succeeded (cause nil) or
// failed, with cause's code and message, within tx (or on the pool when tx
// is nil), if the run that holds it is token (any run when token is ""). It
// returns ECONFLICT when the operation is done already or held by another
// run.
func (s *Store) FinishOperation(ctx context.Context, tx pgx.Tx, id, token string, steps []silo.OperationStep, cause error) (*FinishedOperation, error) {
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
	var out FinishedOperation
	var stepsRaw, params []byte
	var job *int64
	err = db.QueryRow(ctx, `
		UPDATE operations
		SET state = $2, steps = $3, error_code = $4, error = $5, finished_at = now(), updated_at = now()
		WHERE id = $1::uuid AND state = 'running' AND ($6 = '' OR run_token = nullif($6, '')::uuid)
		RETURNING `+operationColumns+`, params, recovery_job_id`, id, state, raw, code, msg, token).Scan(
		&out.ID, &out.Kind, &out.TenantID, &out.State, &stepsRaw, &out.ErrorCode, &out.Error,
		&out.CreatedAt, &out.UpdatedAt, &out.FinishedAt, &params, &job)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, silo.Errorf(silo.ECONFLICT, "operation %q is done already, or run by another server", id)
	}
	if err != nil {
		return nil, CatalogError(err, "finish operation %q", id)
	}
	if job != nil {
		out.RecoveryJobID = *job
	}
	if err := json.Unmarshal(stepsRaw, &out.Steps); err != nil {
		return nil, err
	}
	return &out, json.Unmarshal(params, &out.Params)
}
