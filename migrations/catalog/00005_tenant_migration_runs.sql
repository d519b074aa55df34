-- Tenant schema migrations across the fleet: the version new tenants are
-- born at, runs, and each tenant's part in a run.

-- +goose Up

-- The tenant schema version the fleet is at or moving to: templates and
-- warm databases follow it, so a tenant created during or after a run
-- starts there. One row: written with the latest migration file's version
-- when the first tenant is made, and by every run when it starts. New
-- migration files change nothing until a run.
CREATE TABLE tenant_schema_target (
    singleton  boolean     PRIMARY KEY DEFAULT true,
    version    bigint      NOT NULL,
    run_id     uuid,       -- the run that set it; NULL for the first
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenant_schema_target_one_row CHECK (singleton)
);

CREATE TABLE migration_runs (
    id                uuid        PRIMARY KEY,
    direction         text        NOT NULL,
    target_version    bigint      NOT NULL,
    -- preparing: templates are migrated and tenants listed; canary: the
    -- canary wave runs; running: every other tenant; then a final state.
    state             text        NOT NULL DEFAULT 'preparing',
    concurrency       integer     NOT NULL,
    per_shard         integer     NOT NULL,
    canary            integer     NOT NULL,
    continue_on_error boolean     NOT NULL,
    total             integer     NOT NULL DEFAULT 0,
    error             text        NOT NULL DEFAULT '',
    created_by        text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    CONSTRAINT migration_runs_direction_known CHECK (direction IN ('up', 'down')),
    CONSTRAINT migration_runs_state_known CHECK (state IN ('preparing', 'canary', 'running', 'succeeded', 'failed', 'stopped')),
    CONSTRAINT migration_runs_limits CHECK (concurrency > 0 AND per_shard > 0 AND canary >= 0)
);

-- At most one run in progress: a second start is refused.
CREATE UNIQUE INDEX migration_runs_one_active ON migration_runs ((true))
    WHERE state IN ('preparing', 'canary', 'running');
CREATE INDEX migration_runs_created_idx ON migration_runs (created_at);

CREATE TABLE migration_tenants (
    run_id       uuid        NOT NULL REFERENCES migration_runs (id) ON DELETE CASCADE,
    tenant_id    text        NOT NULL,
    shard        text        NOT NULL,
    canary       boolean     NOT NULL DEFAULT false,
    -- The order tenants are queued in: shards interleaved.
    position     integer     NOT NULL,
    state        text        NOT NULL DEFAULT 'pending',
    from_version bigint,
    to_version   bigint,
    error        text        NOT NULL DEFAULT '',
    sqlstate     text        NOT NULL DEFAULT '',
    attempts     integer     NOT NULL DEFAULT 0,
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (run_id, tenant_id),
    CONSTRAINT migration_tenants_state_known CHECK (state IN ('pending', 'running', 'done', 'failed', 'skipped'))
);

-- Progress counts and the next wave are read by run and state.
CREATE INDEX migration_tenants_run_state_idx ON migration_tenants (run_id, state, canary);
-- A tenant's latest failure is shown in the status.
CREATE INDEX migration_tenants_tenant_idx ON migration_tenants (tenant_id, finished_at);

-- +goose Down
DROP TABLE migration_tenants;
DROP TABLE migration_runs;
DROP TABLE tenant_schema_target;
