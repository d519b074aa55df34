-- The tenant TestPgRestore (pgrestore_test.go) dumps and restores: tables
-- with a sequence, an identity, foreign keys, an index, a view, a SQL
-- function (restored before the table it reads: only check_function_bodies
-- = off, set by pg_restore, lets it in), a trigger, and text that COPY must
-- escape.
CREATE TABLE items (
    id serial PRIMARY KEY,
    name text NOT NULL,
    body text,
    doc jsonb,
    raw bytea,
    updated_at timestamptz
);
CREATE INDEX items_name_idx ON items (name);
CREATE TABLE tags (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    label text NOT NULL UNIQUE
);
CREATE TABLE item_tags (
    item_id int NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    tag_id int NOT NULL REFERENCES tags (id),
    PRIMARY KEY (item_id, tag_id)
);
CREATE VIEW long_items AS SELECT id, name FROM items WHERE length(name) > 8;
CREATE FUNCTION item_count() RETURNS bigint LANGUAGE sql STABLE AS 'SELECT count(*) FROM public.items';
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER items_touch BEFORE INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION touch();

INSERT INTO items (name, body, doc, raw)
SELECT 'item-' || g,
       CASE g % 4 WHEN 0 THEN E'tab\there' WHEN 1 THEN E'line\nbreak' WHEN 2 THEN E'back\\slash ünïcødé' ELSE NULL END,
       jsonb_build_object('n', g, 'even', g % 2 = 0),
       decode(md5(g::text), 'hex')
FROM generate_series(1, 2000) g;
INSERT INTO tags (label) SELECT 'tag-' || g FROM generate_series(1, 20) g;
INSERT INTO item_tags SELECT i, 1 + i % 20 FROM generate_series(1, 2000) i;
INSERT INTO item_tags SELECT i, 1 + (i + 7) % 20 FROM generate_series(1, 2000, 3) i;
