-- Moving tenants between shards: the operation kind, the state a tenant is
-- in during its cutover, and the source databases kept for a grace period.

-- +goose Up
ALTER TABLE operations DROP CONSTRAINT operations_kind_known,
    ADD CONSTRAINT operations_kind_known CHECK (kind IN ('create', 'suspend', 'resume', 'delete', 'purge', 'move'));

-- moving: the cutover of a move, a second or so, while routers hold the
-- tenant's requests.
ALTER TABLE tenants DROP CONSTRAINT tenants_state_known,
    ADD CONSTRAINT tenants_state_known CHECK (state IN ('provisioning', 'active', 'suspended', 'moving', 'deleted', 'purged'));

-- A moved tenant's old database (and role, of the same name), renamed on its
-- old shard and dropped by the purge sweep after drop_after.
CREATE TABLE retired_databases (
    shard      text        NOT NULL REFERENCES shards (name) ON DELETE CASCADE,
    name       text        NOT NULL,
    tenant_id  text        NOT NULL,
    drop_after timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard, name)
);
CREATE INDEX retired_databases_drop_after_idx ON retired_databases (drop_after);

-- +goose Down
DROP TABLE retired_databases;
ALTER TABLE tenants DROP CONSTRAINT tenants_state_known,
    ADD CONSTRAINT tenants_state_known CHECK (state IN ('provisioning', 'active', 'suspended', 'deleted', 'purged'));
ALTER TABLE operations DROP CONSTRAINT operations_kind_known,
    ADD CONSTRAINT operations_kind_known CHECK (kind IN ('create', 'suspend', 'resume', 'delete', 'purge'));
