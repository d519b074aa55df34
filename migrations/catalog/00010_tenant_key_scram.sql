-- SCRAM-SHA-256 verifiers of tenant keys, for the wire-protocol endpoint:
-- a client proves it holds a key without sending it, and the catalog keeps
-- only what verifies the proof (RFC 5802 StoredKey and ServerKey).
--
-- A SCRAM exchange names its salt before the client says which key it
-- holds, so every key of a tenant is salted alike: the salt is the
-- tenant's, and the server tries the proof against each live key.

-- +goose Up
CREATE TABLE tenant_key_salts (
    tenant_id text  PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    salt      bytea NOT NULL,
    CONSTRAINT tenant_key_salts_salt_length CHECK (length(salt) = 16)
);

-- Keys made before this migration have no verifier: they reach the data
-- API only. Both columns are set together, or neither.
ALTER TABLE tenant_keys
    ADD COLUMN scram_stored_key bytea,
    ADD COLUMN scram_server_key bytea,
    ADD CONSTRAINT tenant_keys_scram_lengths CHECK (
        (scram_stored_key IS NULL AND scram_server_key IS NULL) OR
        (length(scram_stored_key) = 32 AND length(scram_server_key) = 32));

-- +goose Down
ALTER TABLE tenant_keys
    DROP CONSTRAINT tenant_keys_scram_lengths,
    DROP COLUMN scram_server_key,
    DROP COLUMN scram_stored_key;
DROP TABLE tenant_key_salts;
