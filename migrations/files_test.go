package migrations_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pressly/goose/v3"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/migrations"
)

// testSQLFile is a MapFS file holding text.
func testSQLFile(text string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(text)} }

func TestCheckFiles(t *testing.T) {
	t.Parallel()
	const good = "-- +goose Up\nCREATE TABLE a (id int);\n-- +goose Down\nDROP TABLE a;\n"
	tests := []struct {
		name  string
		files fstest.MapFS
		err   []string // substrings of the error; none for a valid directory
	}{
		{name: "valid", files: fstest.MapFS{
			"00001_a.sql": testSQLFile(good),
			"00002_b.sql": testSQLFile(`-- Notes get a trigger.
-- +goose NO TRANSACTION

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.at := now(); -- a semicolon inside a block
    RETURN NEW;
END
$$;
-- +goose StatementEnd
CREATE INDEX CONCURRENTLY a_id_idx
    ON a (id); -- a trailing comment

-- +goose Down
DROP INDEX a_id_idx;
DROP FUNCTION touch();
`),
			"00003_up_only.sql": testSQLFile("-- +goose Up\nCREATE TABLE c (id int);\n"),
			"README.md":         testSQLFile("not a migration"),
			"00004_notes.txt":   testSQLFile("ignored too"),
		}},
		{name: "no files", files: fstest.MapFS{"README.md": testSQLFile("x")},
			err: []string{"no goose SQL file"}},
		{name: "name without separator", files: fstest.MapFS{"00001.sql": testSQLFile(good)},
			err: []string{"00001.sql: a tenant migration is named NNNNN_name.sql"}},
		{name: "name without version", files: fstest.MapFS{"add_tags.sql": testSQLFile(good)},
			err: []string{"add_tags.sql: a tenant migration is named NNNNN_name.sql"}},
		{name: "version zero", files: fstest.MapFS{"00000_a.sql": testSQLFile(good)},
			err: []string{"00000_a.sql: ", "greater than zero"}},
		{name: "duplicate version", files: fstest.MapFS{"00001_a.sql": testSQLFile(good), "001_b.sql": testSQLFile(good)},
			err: []string{"001_b.sql: version 1 is also the version of 00001_a.sql"}},
		{name: "no up", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- just a comment\n\n")},
			err: []string{"00003_bad.sql:1: no -- +goose Up annotation"}},
		{name: "sql before up", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- x\nCREATE TABLE a (id int);\n-- +goose Up\nSELECT 1;\n")},
			err: []string{"00003_bad.sql:2: SQL before the -- +goose Up annotation"}},
		{name: "two ups", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\nSELECT 1;\n-- +goose Down\nSELECT 1;\n-- +goose Up\n")},
			err: []string{"00003_bad.sql:5: a second -- +goose Up annotation (the first is on line 1)"}},
		{name: "down before up", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Down\nSELECT 1;\n-- +goose Up\nSELECT 1;\n")},
			err: []string{"00003_bad.sql:1: -- +goose Down before -- +goose Up"}},
		{name: "two downs", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\nSELECT 1;\n-- +goose Down\nSELECT 1;\n-- +goose down\nSELECT 2;\n")},
			err: []string{"00003_bad.sql:5: a second -- +goose Down annotation (the first is on line 3)"}},
		{name: "nested blocks", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n-- +goose StatementBegin\nSELECT 2;\n-- +goose StatementEnd\n-- +goose StatementEnd\n")},
			err: []string{"00003_bad.sql:4: -- +goose StatementBegin inside the block of line 2"}},
		{name: "end without begin", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\nSELECT 1;\n-- +goose StatementEnd\n")},
			err: []string{"00003_bad.sql:3: -- +goose StatementEnd without a -- +goose StatementBegin"}},
		{name: "begin without end", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\nSELECT 1;\n-- +goose StatementBegin\nSELECT 2;\n")},
			err: []string{"00003_bad.sql:3: -- +goose StatementBegin without a -- +goose StatementEnd"}},
		{name: "down inside a block", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n-- +goose Down\n")},
			err: []string{"00003_bad.sql:4: -- +goose Down inside the StatementBegin block of line 2"}},
		{name: "empty up", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\n-- nothing yet\n\n-- +goose Down\nDROP TABLE a;\n")},
			err: []string{"00003_bad.sql:1: the up section has no statement"}},
		{name: "empty up without down", files: fstest.MapFS{"00003_bad.sql": testSQLFile("\n-- +goose Up\n")},
			err: []string{"00003_bad.sql:2: the up section has no statement"}},
		{name: "empty block", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\n-- +goose StatementBegin\n-- only a comment\n-- +goose StatementEnd\n")},
			err: []string{"00003_bad.sql:1: the up section has no statement"}},
		{name: "missing semicolon", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\nCREATE TABLE a (\n  id int\n)\n-- +goose Down\nDROP TABLE a;\n")},
			err: []string{"00003_bad.sql:2: the statement does not end with a semicolon"}},
		{name: "missing semicolon at the end", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\nSELECT 1;\n\nSELECT 2 -- no;\n")},
			err: []string{"00003_bad.sql:4: the statement does not end with a semicolon"}},
		{name: "unknown annotation", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\nSELECT 1;\n-- +goose Upp\n")},
			err: []string{"00003_bad.sql:3: unknown goose annotation \"-- +goose Upp\""}},
		{name: "comment mentioning goose", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\n-- put statements under +goose Up\nSELECT 1;\n")},
			err: []string{"00003_bad.sql:2: unknown goose annotation"}},
		{name: "indented annotation", files: fstest.MapFS{"00003_bad.sql": testSQLFile("-- +goose Up\nSELECT 1;\n  -- +goose Down\nSELECT 2;\n")},
			err: []string{"00003_bad.sql:3: the annotation \"-- +goose Down\" must start at the beginning of the line"}},
		{name: "every bad file is reported", files: fstest.MapFS{
			"00001_a.sql": testSQLFile(good),
			"00002_b.sql": testSQLFile("SELECT 1;\n"),
			"00003_c.sql": testSQLFile("-- +goose Up\n"),
		}, err: []string{"00002_b.sql:1: SQL before", "00003_c.sql:1: the up section has no statement"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := migrations.CheckFiles(tt.files)
			if len(tt.err) == 0 {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, want := range tt.err {
				require.ErrorContains(t, err, want)
			}
		})
	}
}

// The embedded example schema must pass its own checks.
func TestCheckFilesEmbedded(t *testing.T) {
	t.Parallel()
	fsys, err := migrations.TenantFS("")
	require.NoError(t, err)
	require.NoError(t, migrations.CheckFiles(fsys))
	require.NoError(t, migrations.CheckFiles(migrations.CatalogFS()))
}

func TestCheckDown(t *testing.T) {
	t.Parallel()
	files := fstest.MapFS{
		"00001_a.sql": testSQLFile("-- +goose Up\nCREATE TABLE a (id int);\n-- +goose Down\nDROP TABLE a;\n"),
		"00002_b.sql": testSQLFile("-- +goose Up\nCREATE TABLE b (id int);\n"),
		"00003_c.sql": testSQLFile("-- +goose Up\nCREATE TABLE c (id int);\n\n-- +goose Down\n-- nothing to undo?\n"),
		"00004_d.sql": testSQLFile("-- +goose Up\nCREATE TABLE d (id int);\n-- +goose Down\n-- +goose StatementBegin\nDROP TABLE d;\n-- +goose StatementEnd\n"),
		"00007_g.sql": testSQLFile("-- +goose Up\nCREATE TABLE g (id int);\n-- +goose Down\nDROP TABLE g;\n"),
	}
	tests := []struct {
		name     string
		from, to int64
		err      string // "" when the migration down can run
	}{
		{name: "one step", from: 4, to: 3},
		{name: "over a gap", from: 7, to: 3},
		{name: "last file", from: 1, to: 0},
		{name: "empty down section", from: 4, to: 2, err: "00003_c.sql:4: the down section has no statement: it cannot be undone"},
		{name: "highest problem first", from: 7, to: 0, err: "00003_c.sql:4: the down section has no statement"},
		{name: "no down section", from: 2, to: 1, err: "00002_b.sql has no down section: it cannot be undone"},
		{name: "from without a file", from: 8, to: 4, err: "no migration file has version 8"},
		{name: "from in a gap", from: 6, to: 4, err: "no migration file has version 6"},
		{name: "to above from", from: 3, to: 4, err: "the target must be at least 0 and below the version it starts from"},
		{name: "to equal to from", from: 3, to: 3, err: "the target must be at least 0"},
		{name: "negative to", from: 3, to: -1, err: "the target must be at least 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := migrations.CheckDown(files, tt.from, tt.to)
			if tt.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.err)
		})
	}
}

func TestCreateFile(t *testing.T) {
	t.Parallel()

	t.Run("first", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		path, err := migrations.CreateFile(dir, "create_notes")
		require.NoError(t, err)
		require.Equal(t, filepath.Join(dir, "00001_create_notes.sql"), path)
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		text := string(data)
		require.True(t, strings.HasPrefix(text, "-- create_notes\n"), text)
		require.Contains(t, text, "\n-- +goose Up\n\n-- +goose Down\n")

		// The skeleton has no statement yet: the checks say so.
		require.ErrorContains(t, migrations.CheckFiles(os.DirFS(dir)), "00001_create_notes.sql:4: the up section has no statement")
		// Filled in, it passes.
		text = strings.Replace(text, "-- +goose Up\n", "-- +goose Up\nCREATE TABLE notes (id int);\n", 1)
		text = strings.Replace(text, "-- +goose Down\n", "-- +goose Down\nDROP TABLE notes;\n", 1)
		require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
		require.NoError(t, migrations.CheckFiles(os.DirFS(dir)))
		require.NoError(t, migrations.CheckDown(os.DirFS(dir), 1, 0))
	})

	t.Run("next version", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		for _, name := range []string{"00002_a.sql", "00009_b.sql", "notes.txt", "README.sql"} {
			require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("keep"), 0o644))
		}
		path, err := migrations.CreateFile(dir, "add_tags")
		require.NoError(t, err)
		require.Equal(t, filepath.Join(dir, "00010_add_tags.sql"), path)
		data, err := os.ReadFile(filepath.Join(dir, "00009_b.sql"))
		require.NoError(t, err)
		require.Equal(t, "keep", string(data))
	})

	t.Run("more than five digits", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "99999_a.sql"), nil, 0o644))
		path, err := migrations.CreateFile(dir, "b")
		require.NoError(t, err)
		require.Equal(t, filepath.Join(dir, "100000_b.sql"), path)
	})

	t.Run("bad names", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		for _, name := range []string{"", "Add_tags", "1_tags", "_tags", "add-tags", "add tags", "tags.sql", "../x", strings.Repeat("a", 64)} {
			_, err := migrations.CreateFile(dir, name)
			require.ErrorContains(t, err, "[a-z][a-z0-9_]{0,62}", "name %q", name)
		}
		_, err := migrations.CreateFile(dir, strings.Repeat("a", 63))
		require.NoError(t, err, "63 characters is the longest name")
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		require.Len(t, entries, 1, "bad names create nothing")
	})

	t.Run("bad directory", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		_, err := migrations.CreateFile(filepath.Join(dir, "missing"), "a")
		require.ErrorIs(t, err, os.ErrNotExist)
		file := filepath.Join(dir, "file")
		require.NoError(t, os.WriteFile(file, nil, 0o644))
		_, err = migrations.CreateFile(file, "a")
		require.ErrorContains(t, err, "is not a directory")
	})
}

// filesTestPool returns a pool on a new, empty database of shard 0.
func filesTestPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	fleet := pgtest.Start(t)
	dsn := pgtest.NewDatabase(t, fleet.Shards[0])
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// filesTableExists reports whether table is visible in the database behind pool.
func filesTableExists(t *testing.T, pool *pgxpool.Pool, table string) bool {
	t.Helper()
	var ok bool
	if err := pool.QueryRow(context.Background(), `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

// filesTenantVersion is migrations.TenantVersion, failing the test on error.
func filesTenantVersion(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	v, err := migrations.TenantVersion(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var filesSteps = fstest.MapFS{
	"00001_notes.sql": testSQLFile("-- +goose Up\nCREATE TABLE notes (id int PRIMARY KEY, title text NOT NULL);\n-- +goose Down\nDROP TABLE notes;\n"),
	"00002_tags.sql":  testSQLFile("-- +goose Up\nCREATE TABLE tags (name text PRIMARY KEY);\n-- +goose Down\nDROP TABLE tags;\n"),
	"00005_pinned.sql": testSQLFile("-- +goose Up\nALTER TABLE notes ADD COLUMN pinned boolean NOT NULL DEFAULT false;\n" +
		"-- +goose Down\nALTER TABLE notes DROP COLUMN pinned;\n"),
}

func TestMigrateTenantTo(t *testing.T) {
	t.Parallel()
	pool := filesTestPool(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, migrations.CheckFiles(filesSteps))

	require.EqualValues(t, 0, filesTenantVersion(t, pool), "no version table yet")
	require.False(t, filesTableExists(t, pool, migrations.TenantVersionTable))

	// A version no file has is refused before the database is touched.
	for _, target := range []int64{3, 7, -1} {
		_, _, err := migrations.MigrateTenantTo(ctx, pool, filesSteps, target)
		require.ErrorContains(t, err, "versions go from 1 to 5", "target %d", target)
	}
	require.False(t, filesTableExists(t, pool, migrations.TenantVersionTable), "a refused target creates nothing")

	steps := []struct {
		target, from, to int64
		tables           map[string]bool
	}{
		{target: 2, from: 0, to: 2, tables: map[string]bool{"notes": true, "tags": true}},
		{target: 2, from: 2, to: 2, tables: map[string]bool{"notes": true, "tags": true}},
		{target: 5, from: 2, to: 5, tables: map[string]bool{"notes": true, "tags": true}},
		{target: 1, from: 5, to: 1, tables: map[string]bool{"notes": true, "tags": false}},
		{target: 0, from: 1, to: 0, tables: map[string]bool{"notes": false, "tags": false}},
		{target: 5, from: 0, to: 5, tables: map[string]bool{"notes": true, "tags": true}},
	}
	for _, s := range steps {
		from, to, err := migrations.MigrateTenantTo(ctx, pool, filesSteps, s.target)
		require.NoError(t, err, "to %d", s.target)
		require.Equal(t, s.from, from, "to %d: from", s.target)
		require.Equal(t, s.to, to, "to %d: to", s.target)
		require.Equal(t, s.to, filesTenantVersion(t, pool))
		for table, want := range s.tables {
			require.Equal(t, want, filesTableExists(t, pool, table), "to %d: table %s", s.target, table)
		}
	}
	var pinned int
	require.NoError(t, pool.QueryRow(ctx, `
		SELECT count(*) FROM information_schema.columns
		WHERE table_name = 'notes' AND column_name = 'pinned'`).Scan(&pinned))
	require.Equal(t, 1, pinned, "version 5 applied again after going to 0")

	// MigrateTenant only goes up: files that stop at version 2 leave the
	// database at 5.
	older := fstest.MapFS{"00001_notes.sql": filesSteps["00001_notes.sql"], "00002_tags.sql": filesSteps["00002_tags.sql"]}
	v, err := migrations.MigrateTenant(ctx, pool, older)
	require.NoError(t, err)
	require.EqualValues(t, 5, v)
	require.EqualValues(t, 5, filesTenantVersion(t, pool))
}

// A failing statement's SQLSTATE can be read from the error, and the
// database stays at the last migration that succeeded.
func TestMigrateTenantToSQLState(t *testing.T) {
	t.Parallel()
	pool := filesTestPool(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	files := fstest.MapFS{
		"00001_notes.sql": filesSteps["00001_notes.sql"],
		"00002_bad.sql": testSQLFile("-- +goose Up\nCREATE TABLE half (id int);\nSELECT 1/0;\n" +
			"-- +goose Down\nDROP TABLE missing_table;\n"),
	}

	from, to, err := migrations.MigrateTenantTo(ctx, pool, files, 2)
	require.Error(t, err)
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "%v", err)
	require.Equal(t, "22012", pgErr.Code) // division_by_zero
	var partial *goose.PartialError
	require.True(t, errors.As(err, &partial))
	require.EqualValues(t, 2, partial.Failed.Source.Version)
	require.Len(t, partial.Applied, 1)
	require.EqualValues(t, 0, from)
	require.EqualValues(t, 1, to, "left at the last migration that succeeded")
	require.EqualValues(t, 1, filesTenantVersion(t, pool))
	require.True(t, filesTableExists(t, pool, "notes"))
	require.False(t, filesTableExists(t, pool, "half"), "the failed migration's transaction was rolled back")

	// MigrateTenant's errors carry the SQLSTATE too.
	_, err = migrations.MigrateTenant(ctx, pool, files)
	require.True(t, errors.As(err, &pgErr))
	require.Equal(t, "22012", pgErr.Code)

	// And so does a failing down section.
	files["00002_bad.sql"] = testSQLFile("-- +goose Up\nCREATE TABLE half (id int);\n-- +goose Down\nDROP TABLE missing_table;\n")
	_, to, err = migrations.MigrateTenantTo(ctx, pool, files, 2)
	require.NoError(t, err)
	require.EqualValues(t, 2, to)
	from, to, err = migrations.MigrateTenantTo(ctx, pool, files, 0)
	require.True(t, errors.As(err, &pgErr), "%v", err)
	require.Equal(t, "42P01", pgErr.Code) // undefined_table
	require.EqualValues(t, 2, from)
	require.EqualValues(t, 2, to)
	require.True(t, filesTableExists(t, pool, "half"))
}
