-- Tenant provisioning: secrets, soft deletes, durable operations and the
-- warm pool of ready databases.

-- +goose Up
ALTER TABLE tenants
    -- The tenant role's password, sealed with AES-GCM under SILO_SECRET_KEY;
    -- NULL on tombstones.
    ADD COLUMN password_sealed bytea,
    ADD COLUMN deleted_at      timestamptz,
    ADD COLUMN purge_after     timestamptz;

-- The purger looks for deleted tenants whose grace period is over.
CREATE INDEX tenants_purge_after_idx ON tenants (purge_after) WHERE state = 'deleted';

CREATE TABLE operations (
    id              uuid        PRIMARY KEY,
    kind            text        NOT NULL,
    -- No foreign key: a create that is rolled back removes its tenant row,
    -- so the id can be tried again, and its operation stays as history.
    tenant_id       text        NOT NULL,
    state           text        NOT NULL DEFAULT 'running',
    steps           jsonb       NOT NULL DEFAULT '[]',
    -- What the operation needs to resume: the request's parameters.
    params          jsonb       NOT NULL DEFAULT '{}',
    error_code      text        NOT NULL DEFAULT '',
    error           text        NOT NULL DEFAULT '',
    idempotency_key text,
    request_hash    text        NOT NULL DEFAULT '',
    -- The River job that resumes the operation if its server dies.
    recovery_job_id bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT operations_kind_known CHECK (kind IN ('create', 'suspend', 'resume', 'delete', 'purge')),
    CONSTRAINT operations_state_known CHECK (state IN ('running', 'succeeded', 'failed'))
);

CREATE UNIQUE INDEX operations_idempotency_key ON operations (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- At most one running operation per tenant: a second one is refused.
CREATE UNIQUE INDEX operations_one_running_per_tenant ON operations (tenant_id) WHERE state = 'running';
CREATE INDEX operations_tenant_created_idx ON operations (tenant_id, created_at);

-- Databases made ahead of time on each shard from its template, claimed by
-- new tenants and refilled in the background. A row is written as
-- 'creating' before CREATE DATABASE and marked 'ready' after, so a crash in
-- between leaves a row to clean up, never an unknown database.
CREATE TABLE warm_databases (
    shard          text        NOT NULL REFERENCES shards (name) ON DELETE CASCADE,
    name           text        NOT NULL,
    schema_version bigint      NOT NULL,
    state          text        NOT NULL DEFAULT 'creating',
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard, name),
    CONSTRAINT warm_databases_state_known CHECK (state IN ('creating', 'ready'))
);

-- +goose Down
DROP TABLE warm_databases;
DROP TABLE operations;
DROP INDEX tenants_purge_after_idx;
ALTER TABLE tenants DROP COLUMN purge_after, DROP COLUMN deleted_at, DROP COLUMN password_sealed;
