-- GET /v1/operations: operations newest first, by (created_at, id), the
-- key of its cursor, filtered by tenant, state or kind.

-- +goose Up
-- Every operation, and those of one kind (kinds are few and all common, so
-- the scan finds a page soon).
CREATE INDEX operations_created_idx ON operations (created_at, id);
-- Those in one state: running and failed ones are few among many that
-- succeeded. A tenant's are read through operations_tenant_created_idx.
CREATE INDEX operations_state_created_idx ON operations (state, created_at, id);

-- +goose Down
DROP INDEX operations_state_created_idx;
DROP INDEX operations_created_idx;
