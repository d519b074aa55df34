package migrations_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/migrations"
)

// driftFiles build a schema with one of each kind of object a fingerprint
// describes.
var driftFiles = fstest.MapFS{
	"00001_schema.sql": testSQLFile(`-- +goose Up
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer NOT NULL CONSTRAINT positive_check CHECK (VALUE > 0);
CREATE TABLE authors (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL CONSTRAINT authors_name_key UNIQUE
);
CREATE TABLE notes (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    author_id  bigint      NOT NULL REFERENCES authors (id) ON DELETE CASCADE,
    title      text        NOT NULL,
    body       text        NOT NULL DEFAULT '',
    mood       mood,
    stars      positive    DEFAULT 1,
    title_len  integer     GENERATED ALWAYS AS (length(title)) STORED,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notes_created_at_idx ON notes (created_at);
CREATE SEQUENCE ticket_seq START 100;
CREATE VIEW recent_notes AS
    SELECT id, title FROM notes WHERE created_at > now() - interval '1 day';
-- +goose StatementBegin
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.created_at := now();
    RETURN NEW;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER notes_touch BEFORE UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TABLE events (day date NOT NULL, kind text) PARTITION BY RANGE (day);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE SCHEMA audit;
CREATE TABLE audit.log (id serial PRIMARY KEY, note_id bigint);

-- +goose Down
DROP SCHEMA audit CASCADE;
DROP TABLE events;
DROP TRIGGER notes_touch ON notes;
DROP FUNCTION touch();
DROP VIEW recent_notes;
DROP SEQUENCE ticket_seq;
DROP TABLE notes;
DROP TABLE authors;
DROP DOMAIN positive;
DROP TYPE mood;
`),
}

// driftOwner owns the objects of the second database of TestSchemaFingerprint.
const driftOwner = "silo_drift_owner"

// driftPools returns pools on two new databases of shard 0 migrated with
// driftFiles: the first by the superuser, the second owned by driftOwner and
// migrated as that role.
func driftPools(t *testing.T) (a, b *pgxpool.Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fleet := pgtest.Start(t)
	shard := fleet.Shards[0]

	admin, err := pgx.Connect(ctx, shard.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	role := pgx.Identifier{driftOwner}.Sanitize()
	if _, err := admin.Exec(ctx, "CREATE ROLE "+role); err != nil {
		t.Fatal(err)
	}
	// Registered before the databases', so it runs after they are dropped.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, shard.DSN("postgres"))
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP ROLE "+role); err != nil {
			t.Errorf("drop role %s: %v", role, err)
		}
	})

	dsnA := pgtest.NewDatabase(t, shard)
	dsnB := pgtest.NewDatabase(t, shard)
	cfgB, err := pgxpool.ParseConfig(dsnB)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{cfgB.ConnConfig.Database}.Sanitize()+" OWNER TO "+role); err != nil {
		t.Fatal(err)
	}
	cfgB.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET ROLE "+role)
		return err
	}

	a, err = pgxpool.New(ctx, dsnA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	b, err = pgxpool.NewWithConfig(ctx, cfgB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	for _, p := range []*pgxpool.Pool{a, b} {
		if _, err := migrations.MigrateTenant(ctx, p, driftFiles); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

// driftFingerprint is migrations.SchemaFingerprint, failing the test on error.
func driftFingerprint(t *testing.T, pool *pgxpool.Pool) migrations.Fingerprint {
	t.Helper()
	f, err := migrations.SchemaFingerprint(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestSchemaFingerprint(t *testing.T) {
	t.Parallel()
	a, b := driftPools(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var ownerA, ownerB string
	require.NoError(t, a.QueryRow(ctx, `SELECT tableowner FROM pg_tables WHERE tablename = 'notes'`).Scan(&ownerA))
	require.NoError(t, b.QueryRow(ctx, `SELECT tableowner FROM pg_tables WHERE tablename = 'notes'`).Scan(&ownerB))
	require.NotEqual(t, ownerA, ownerB)
	require.Equal(t, driftOwner, ownerB)

	want := driftFingerprint(t, a)
	got := driftFingerprint(t, b)
	t.Logf("fingerprint:\n%s", strings.Join(want.Lines, "\n"))
	require.Equal(t, want.Lines, got.Lines, "same migrations, different owners")
	require.Equal(t, want.Hash, got.Hash)
	sum := sha256.Sum256([]byte(strings.Join(want.Lines, "\n")))
	require.Equal(t, hex.EncodeToString(sum[:]), want.Hash)
	require.IsIncreasing(t, want.Lines)
	for _, line := range []string{
		"schema audit",
		"table public.notes",
		"table audit.log",
		"partitioned table public.events PARTITION BY RANGE (day)",
		"table public.events_2024 PARTITION OF public.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
		"type public.mood ENUM ('sad', 'ok', 'happy')",
		"domain public.positive integer NOT NULL",
		"domain constraint public.positive positive_check CHECK ((VALUE > 0))",
		"column public.notes.title text NOT NULL",
		"column public.notes.id bigint NOT NULL GENERATED ALWAYS AS IDENTITY",
		"column public.notes.body text NOT NULL DEFAULT ''::text",
		"column public.notes.title_len integer GENERATED ALWAYS AS (length(title)) STORED",
		"column public.recent_notes.title text",
		"index public.notes notes_pkey CREATE UNIQUE INDEX notes_pkey ON public.notes USING btree (id)",
		"constraint public.notes notes_author_id_fkey FOREIGN KEY (author_id) REFERENCES authors(id) ON DELETE CASCADE",
		"trigger public.notes notes_touch CREATE TRIGGER notes_touch BEFORE UPDATE ON public.notes FOR EACH ROW EXECUTE FUNCTION touch()",
	} {
		require.Contains(t, want.Lines, line)
	}
	for _, line := range want.Lines {
		require.NotContains(t, line, migrations.TenantVersionTable)
	}

	// Rows of the version table are not schema.
	_, err := b.Exec(ctx, `INSERT INTO silo_schema_migrations (version_id, is_applied) VALUES (99, true)`)
	require.NoError(t, err)
	require.Equal(t, want.Hash, driftFingerprint(t, b).Hash)
	_, err = b.Exec(ctx, `DELETE FROM silo_schema_migrations WHERE version_id = 99`)
	require.NoError(t, err)

	// Nor are data and sequence values.
	_, err = b.Exec(ctx, `
		INSERT INTO authors (name) VALUES ('ada');
		SELECT nextval('ticket_seq');`)
	require.NoError(t, err)
	require.Equal(t, want.Hash, driftFingerprint(t, b).Hash)

	// Each change shows as exactly its lines, and undoing it restores the
	// fingerprint.
	changes := []struct {
		name           string
		do, undo       string
		missing, extra []string
	}{
		{
			name:  "add a column",
			do:    `ALTER TABLE notes ADD COLUMN pinned boolean NOT NULL DEFAULT false`,
			undo:  `ALTER TABLE notes DROP COLUMN pinned`,
			extra: []string{"column public.notes.pinned boolean NOT NULL DEFAULT false"},
		},
		{
			name:  "add an index",
			do:    `CREATE INDEX notes_title_idx ON notes (title)`,
			undo:  `DROP INDEX notes_title_idx`,
			extra: []string{"index public.notes notes_title_idx CREATE INDEX notes_title_idx ON public.notes USING btree (title)"},
		},
		{
			name:  "add a constraint",
			do:    `ALTER TABLE notes ADD CONSTRAINT notes_title_short CHECK (length(title) < 200)`,
			undo:  `ALTER TABLE notes DROP CONSTRAINT notes_title_short`,
			extra: []string{"constraint public.notes notes_title_short CHECK ((length(title) < 200))"},
		},
		{
			name:    "change a column's type",
			do:      `ALTER TABLE notes ALTER COLUMN author_id TYPE integer`,
			undo:    `ALTER TABLE notes ALTER COLUMN author_id TYPE bigint`,
			missing: []string{"column public.notes.author_id bigint NOT NULL"},
			extra:   []string{"column public.notes.author_id integer NOT NULL"},
		},
		{
			name:    "drop a NOT NULL",
			do:      `ALTER TABLE notes ALTER COLUMN title DROP NOT NULL`,
			undo:    `ALTER TABLE notes ALTER COLUMN title SET NOT NULL`,
			missing: []string{"column public.notes.title text NOT NULL"},
			extra:   []string{"column public.notes.title text"},
		},
		{
			name:    "change a function",
			do:      `CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$`,
			undo:    "CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n    NEW.created_at := now();\n    RETURN NEW;\nEND\n$$",
			missing: []string{"function public.touch() RETURNS trigger definition sha256:"},
			extra:   []string{"function public.touch() RETURNS trigger definition sha256:"},
		},
	}
	for _, c := range changes {
		_, err := b.Exec(ctx, c.do)
		require.NoError(t, err, c.name)
		changed := driftFingerprint(t, b)
		require.NotEqual(t, want.Hash, changed.Hash, c.name)
		missing, extra := migrations.DiffFingerprints(want, changed)
		driftRequireLines(t, c.missing, missing, c.name+": missing")
		driftRequireLines(t, c.extra, extra, c.name+": extra")

		_, err = b.Exec(ctx, c.undo)
		require.NoError(t, err, c.name)
		restored := driftFingerprint(t, b)
		missing, extra = migrations.DiffFingerprints(want, restored)
		require.Empty(t, missing, c.name+": undone")
		require.Empty(t, extra, c.name+": undone")
		require.Equal(t, want.Hash, restored.Hash, c.name+": undone")
	}
}

// driftRequireLines checks that got holds one line per prefix in want, in order,
// each starting with it.
func driftRequireLines(t *testing.T, want, got []string, msg string) {
	t.Helper()
	require.Len(t, got, len(want), "%s: %q", msg, got)
	for i := range want {
		require.True(t, strings.HasPrefix(got[i], want[i]), "%s: %q does not start with %q", msg, got[i], want[i])
	}
}

func TestDiffFingerprints(t *testing.T) {
	t.Parallel()
	fp := func(lines ...string) migrations.Fingerprint { return migrations.Fingerprint{Lines: lines} }
	tests := []struct {
		name           string
		want, got      migrations.Fingerprint
		missing, extra []string
	}{
		{name: "equal", want: fp("a", "b"), got: fp("a", "b")},
		{name: "both empty", want: fp(), got: fp()},
		{name: "missing", want: fp("a", "b", "c"), got: fp("b"), missing: []string{"a", "c"}},
		{name: "extra", want: fp("b"), got: fp("a", "b", "c"), extra: []string{"a", "c"}},
		{name: "changed", want: fp("a", "column x int"), got: fp("a", "column x text"),
			missing: []string{"column x int"}, extra: []string{"column x text"}},
		{name: "duplicates count", want: fp("a", "a"), got: fp("a"), missing: []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			missing, extra := migrations.DiffFingerprints(tt.want, tt.got)
			require.Equal(t, tt.missing, missing)
			require.Equal(t, tt.extra, extra)
		})
	}
}
