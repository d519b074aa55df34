-- Run by TestPsql (clients_test.go) through the endpoint, in a directory
-- holding in.tsv; it writes out.tsv there.
\set VERBOSITY verbose
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
BEGIN;
INSERT INTO items VALUES (1, 'one'), (2, 'two');
COMMIT;
BEGIN;
INSERT INTO items VALUES (3, 'three');
ROLLBACK;
SELECT 'after rollback', count(*) FROM items;
\copy items FROM 'in.tsv'
\copy (SELECT id, name FROM items ORDER BY id) TO 'out.tsv'
-- Each error fails its statement (or its transaction), not the session.
\set ON_ERROR_STOP 0
INSERT INTO items VALUES (1, 'again');
SELECT 1 / 0;
BEGIN;
SELECT nonexistent FROM items;
SELECT 1;
ROLLBACK;
\set ON_ERROR_STOP 1
SELECT 'end', count(*) FROM items;
