-- Resource bounds per tenant, kept on its role on the shard (CONNECTION
-- LIMIT, temp_file_limit) and here, and the grammar of database names:
-- every name Silo puts in DDL is one of these.

-- +goose Up
ALTER TABLE tenants
    ADD COLUMN connection_limit   integer NOT NULL DEFAULT 20,
    ADD COLUMN temp_file_limit_mb integer NOT NULL DEFAULT 5120,
    ADD CONSTRAINT tenants_connection_limit_range CHECK (connection_limit = -1 OR connection_limit BETWEEN 1 AND 10000),
    ADD CONSTRAINT tenants_temp_file_limit_range CHECK (temp_file_limit_mb = -1 OR temp_file_limit_mb BETWEEN 1 AND 2097151),
    ADD CONSTRAINT tenants_database_name_grammar CHECK (database_name ~ '^t_[a-z0-9_]+$' AND length(database_name) <= 63);

-- +goose Down
ALTER TABLE tenants
    DROP CONSTRAINT tenants_database_name_grammar,
    DROP COLUMN temp_file_limit_mb,
    DROP COLUMN connection_limit;
