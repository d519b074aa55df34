-- Shard DSNs sealed at rest, as tenant passwords are: AES-256-GCM under
-- SILO_SECRET_KEY, bound to "shard/NAME" (shardmap.Sealer).

-- +goose Up
ALTER TABLE shards
    ADD COLUMN dsn_sealed bytea,
    ALTER COLUMN dsn DROP NOT NULL;

-- SQL cannot encrypt: the server seals the DSNs of existing rows in Go
-- right after the migrations (Store.SealPlaintextDSNs) and sets dsn to NULL.
-- NOT VALID leaves those rows alone until then, but holds every row
-- inserted or updated from now on: none can carry a plaintext DSN, and each
-- has a sealed one.
ALTER TABLE shards ADD CONSTRAINT shards_dsn_sealed_only
    CHECK (dsn IS NULL AND dsn_sealed IS NOT NULL) NOT VALID;

-- +goose Down
-- SQL cannot open a sealed DSN either, so going down would lose every
-- shard's DSN: refused while any shard has one.
-- +goose StatementBegin
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM shards WHERE dsn IS NULL) THEN
        RAISE EXCEPTION 'shards have sealed DSNs, which SQL cannot open: this migration cannot be undone while a shard is registered';
    END IF;
END
$$;
-- +goose StatementEnd
ALTER TABLE shards
    DROP CONSTRAINT shards_dsn_sealed_only,
    DROP COLUMN dsn_sealed,
    ALTER COLUMN dsn SET NOT NULL;
