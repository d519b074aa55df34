-- +goose Up
-- An import (a restore of an archive into a tenant) is recorded as an
-- operation: its running row, uncommitted while it runs, keeps any other
-- operation of the tenant from starting meanwhile.
ALTER TABLE operations DROP CONSTRAINT operations_kind_known,
    ADD CONSTRAINT operations_kind_known CHECK (kind IN ('create', 'suspend', 'resume', 'delete', 'purge', 'move', 'import'));

-- +goose Down
DELETE FROM operations WHERE kind = 'import';
ALTER TABLE operations DROP CONSTRAINT operations_kind_known,
    ADD CONSTRAINT operations_kind_known CHECK (kind IN ('create', 'suspend', 'resume', 'delete', 'purge', 'move'));
