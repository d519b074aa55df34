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
    ADD COLUMN cancel_requested_by text NOT NULL DEFAULT '',
    -- When the undo began: from then on the operation is only undone. Set,
    -- like pivoted_at, only while the other is not: the row's lock orders
    -- the two.
    ADD COLUMN undo_started_at     timestamptz,
    -- The run that holds the operation: a fencing token, set when a run
    -- takes the operation's lease. A run whose lease was lost (its catalog
    -- connection cut) while it went on can no longer pivot, undo, record
    -- steps or finish the operation.
    ADD COLUMN run_token           uuid;

-- Operations recorded by an earlier Silo that had already passed what is
-- now their pivot: an active tenant's create, a moved tenant's move.
UPDATE operations o SET pivoted_at = o.updated_at
FROM tenants t
WHERE o.state = 'running' AND t.id = o.tenant_id
  AND ((o.kind = 'create' AND t.state = 'active')
    OR (o.kind = 'move' AND t.shard = o.params->>'to'));

-- The recovery sweep looks for running operations whose server is gone.
CREATE INDEX operations_running_updated_idx ON operations (updated_at) WHERE state = 'running';

-- +goose Down
DROP INDEX operations_running_updated_idx;
ALTER TABLE operations
    DROP COLUMN run_token,
    DROP COLUMN undo_started_at,
    DROP COLUMN cancel_requested_by,
    DROP COLUMN cancel_requested_at,
    DROP COLUMN pivoted_at;
