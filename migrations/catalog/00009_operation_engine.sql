-- The operation engine: an operation's point of no return, and its
-- cancellation.

-- +goose Up
ALTER TABLE operations
    -- When the operation's pivot step committed: from then on it only goes
    -- forward, and its undo steps never run. Set in the pivot step's own
    -- transaction, so the catalog never holds the pivot's effect without it.
    ADD COLUMN pivoted_at          timestamptz,
    -- When someone asked for the operation to stop; honoured at the next
    -- step boundary if the pivot has not committed.
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN cancel_requested_by text NOT NULL DEFAULT '';

-- The recovery sweep looks for running operations whose server is gone.
CREATE INDEX operations_running_updated_idx ON operations (updated_at) WHERE state = 'running';

-- +goose Down
DROP INDEX operations_running_updated_idx;
ALTER TABLE operations
    DROP COLUMN cancel_requested_by,
    DROP COLUMN cancel_requested_at,
    DROP COLUMN pivoted_at;
