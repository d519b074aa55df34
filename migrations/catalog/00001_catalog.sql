-- The control-plane catalog: shards, tenants and the audit log.

-- +goose Up
CREATE TABLE shards (
    name       text        PRIMARY KEY,
    dsn        text        NOT NULL,
    region     text        NOT NULL,
    weight     integer     NOT NULL,
    state      text        NOT NULL DEFAULT 'active',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT shards_name_grammar CHECK (name ~ '^[a-z]([a-z0-9-]*[a-z0-9])?$' AND length(name) <= 32),
    CONSTRAINT shards_region_grammar CHECK (region ~ '^[a-z][a-z0-9-]*$' AND length(region) <= 32),
    CONSTRAINT shards_weight_range CHECK (weight BETWEEN 1 AND 10000),
    CONSTRAINT shards_state_known CHECK (state IN ('active', 'draining', 'disabled'))
);

-- Placement filters shards by region and state.
CREATE INDEX shards_region_state_idx ON shards (region, state);

CREATE TABLE tenants (
    id             text        PRIMARY KEY,
    -- NULL only on purged tombstones whose shard was later removed: a shard
    -- with live tenants cannot be removed (checked under a row lock).
    shard          text        REFERENCES shards (name) ON DELETE SET NULL,
    database_name  text        NOT NULL,
    region         text        NOT NULL,
    state          text        NOT NULL,
    schema_version bigint      NOT NULL DEFAULT 0,
    epoch          bigint      NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_id_grammar CHECK (id ~ '^[a-z]([a-z0-9-]*[a-z0-9])?$' AND length(id) <= 48),
    CONSTRAINT tenants_state_known CHECK (state IN ('provisioning', 'active', 'suspended', 'deleted', 'purged')),
    CONSTRAINT tenants_live_have_shard CHECK (state = 'purged' OR shard IS NOT NULL),
    CONSTRAINT tenants_epoch_positive CHECK (epoch > 0)
);

-- Tenant lists filter by shard and state, and placement counts a shard's
-- live tenants; the id column ends the key for keyset pagination.
CREATE INDEX tenants_shard_state_id_idx ON tenants (shard, state, id);
CREATE INDEX tenants_region_id_idx ON tenants (region, id);
CREATE INDEX tenants_state_id_idx ON tenants (state, id);
-- Two live tenants never share a database on one shard.
CREATE UNIQUE INDEX tenants_shard_database_live_key ON tenants (shard, database_name) WHERE state <> 'purged';

CREATE TABLE audit_log (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text        NOT NULL,
    action     text        NOT NULL,
    target     text        NOT NULL,
    params     jsonb       NOT NULL DEFAULT '{}',
    result     text        NOT NULL,
    error      text        NOT NULL DEFAULT '',
    request_id text        NOT NULL DEFAULT ''
);

-- The audit log is read newest first, by target or action.
CREATE INDEX audit_log_target_id_idx ON audit_log (target, id);
CREATE INDEX audit_log_action_id_idx ON audit_log (action, id);

-- +goose Down
DROP TABLE audit_log;
DROP TABLE tenants;
DROP TABLE shards;
