-- Every change to a tenant row is announced on channel silo_tenant with the
-- tenant's id, so every server's route cache drops it within moments.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION silo_notify_tenant() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('silo_tenant', COALESCE(NEW.id, OLD.id));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER tenants_notify
    AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION silo_notify_tenant();

-- +goose Down
DROP TRIGGER tenants_notify ON tenants;
DROP FUNCTION silo_notify_tenant();
