-- Tenant API keys: bearer tokens that reach one tenant's data through the
-- data API (query, transaction) and nothing else. The token is shown once,
-- when the key is made; the catalog keeps only the SHA-256 of its secret.

-- +goose Up
CREATE TABLE tenant_keys (
    -- "k_" and 12 random base32 characters; the token is silo_<id>_<secret>.
    id           text        PRIMARY KEY,
    -- A tenant row is deleted only when its create is rolled back; purged
    -- tenants keep theirs, and their keys with it, as history.
    tenant_id    text        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         text        NOT NULL,
    secret_hash  bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    -- Updated at most once a minute per key, so authentication stays a read.
    last_used_at timestamptz,
    CONSTRAINT tenant_keys_id_grammar CHECK (id ~ '^k_[a-z2-7]{12}$'),
    CONSTRAINT tenant_keys_name_length CHECK (length(name) BETWEEN 1 AND 64),
    CONSTRAINT tenant_keys_secret_hash_length CHECK (length(secret_hash) = 32)
);

-- A tenant's keys are listed in id order (keyset pagination); the primary
-- key serves authentication.
CREATE INDEX tenant_keys_tenant_id_id_idx ON tenant_keys (tenant_id, id);

-- +goose Down
DROP TABLE tenant_keys;
