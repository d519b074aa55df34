-- An example tenant schema. Point --tenant-migrations (SILO_TENANT_MIGRATIONS)
-- at a directory of your own goose SQL files to replace it.

-- +goose Up
CREATE TABLE notes (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title      text        NOT NULL,
    body       text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX notes_created_at_idx ON notes (created_at);

-- +goose Down
DROP TABLE notes;
