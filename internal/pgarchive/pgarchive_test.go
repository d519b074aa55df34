package pgarchive_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/internal/pgarchive"
	"github.com/silo-db/silo/internal/pgtest"
	"github.com/silo-db/silo/pgcluster"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// schema has what an archive's TOC holds for a tenant: a table and its
// sequence, an index, a view, a function, a comment and grants, all owned
// by a role that the server restored into does not have.
const schema = `
CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE INDEX notes_body ON notes (body);
CREATE VIEW long_notes AS SELECT id, body FROM notes WHERE length(body) > 5;
CREATE FUNCTION shout(s text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT upper(s) $$;
COMMENT ON TABLE notes IS 'what the tenant wrote';
GRANT SELECT ON notes TO PUBLIC;
GRANT EXECUTE ON FUNCTION shout(text) TO PUBLIC;
INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 100) g;
`

var roles atomic.Int64

type bundle struct {
	ctx     context.Context
	fleet   *pgtest.Fleet
	binDir  string
	role    string
	srcDSN  string // the source database, as a superuser
	tempDir string
}

// setup fills a database on the first shard with schema, owned by a new role.
func setup(t *testing.T) *bundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	fleet := pgtest.Start(t)
	binDir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	b := &bundle{ctx: ctx, fleet: fleet, binDir: binDir, tempDir: t.TempDir()}
	b.srcDSN = pgtest.NewDatabase(t, fleet.Shards[0])
	conn, err := pgx.Connect(ctx, b.srcDSN)
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(ctx))
	b.role = "pgarchive_owner_" + string(rune('a'+roles.Add(1)))
	ident := pgx.Identifier{b.role}.Sanitize()
	_, err = conn.Exec(ctx, "CREATE ROLE "+ident)
	require.NoError(t, err)
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), b.srcDSN)
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP OWNED BY "+ident)
			_, _ = c.Exec(context.Background(), "DROP ROLE "+ident)
			_ = c.Close(context.Background())
		}
	})
	_, err = conn.Exec(ctx, "GRANT CREATE ON SCHEMA public TO "+ident+"; SET ROLE "+ident+";"+schema)
	require.NoError(t, err)
	return b
}

// dump runs pg_dump --format=custom with args, to a pipe (data offsets not
// set) or, with toFile, to a file (offsets set), and returns the archive's
// path.
func (b *bundle) dump(t *testing.T, toFile bool, args ...string) string {
	t.Helper()
	file := filepath.Join(b.tempDir, "archive.dump")
	args = append([]string{"--format=custom", "--dbname=" + b.srcDSN}, args...)
	cmd := exec.CommandContext(b.ctx, filepath.Join(b.binDir, "pg_dump"), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if toFile {
		cmd.Args = append(cmd.Args, "--file="+file)
		require.NoError(t, cmd.Run(), stderr.String())
		return file
	}
	out, err := cmd.Output()
	require.NoError(t, err, stderr.String())
	require.NoError(t, os.WriteFile(file, out, 0o600))
	return file
}

// rewrite runs DropOwners on the archive at path and returns the new one's.
func (b *bundle) rewrite(t *testing.T, path string) string {
	t.Helper()
	in, err := os.Open(path)
	require.NoError(t, err)
	defer in.Close()
	outPath := path + ".noowner"
	out, err := os.Create(outPath)
	require.NoError(t, err)
	require.NoError(t, pgarchive.DropOwners(out, in))
	require.NoError(t, out.Close())
	return outPath
}

func (b *bundle) pgRestore(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.CommandContext(b.ctx, filepath.Join(b.binDir, "pg_restore"), args...).CombinedOutput()
	return string(out), err
}

// ownerField is the last field of a pg_restore --list entry: its owner.
var ownerField = regexp.MustCompile(`(?m)^(\d+; .*) \S*$`)

func TestDropOwnersKeepsAllButOwners(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, toFile := range []bool{false, true} {
		archive := b.dump(t, toFile)
		before, err := b.pgRestore(t, "--list", archive)
		require.NoError(t, err, before)
		rewritten := b.rewrite(t, archive)
		after, err := b.pgRestore(t, "--list", rewritten)
		require.NoError(t, err, after)

		for _, entry := range []string{"TABLE public notes", "SEQUENCE public notes_id_seq", "INDEX public notes_body",
			"VIEW public long_notes", "FUNCTION public shout(text)", "ACL public TABLE notes", "TABLE DATA public notes"} {
			require.Contains(t, before, entry+" "+b.role+"\n")
			require.Contains(t, after, entry+" \n", "no owner")
		}
		require.NotContains(t, after, b.role)
		require.Equal(t, ownerField.ReplaceAllString(before, "$1 "), after, "only the owners differ")

		// The SQL pg_restore would run: no owners, everything else as it was.
		sqlBefore, err := b.pgRestore(t, "--file=-", archive)
		require.NoError(t, err, sqlBefore)
		sqlAfter, err := b.pgRestore(t, "--file=-", rewritten)
		require.NoError(t, err, sqlAfter)
		require.Contains(t, sqlBefore, "OWNER TO "+b.role)
		require.NotContains(t, sqlAfter, "OWNER TO")
		require.Equal(t, dropOwnerLines(sqlBefore, b.role), dropOwnerLines(sqlAfter, b.role))
	}
}

// dropOwnerLines removes what the owner adds to pg_restore's SQL: the
// ALTER ... OWNER TO statements and the Owner: of each entry's comment. It
// also removes the key of psql's \restrict, new at each run.
func dropOwnerLines(sql, role string) string {
	sql = regexp.MustCompile(`(?m)^ALTER .* OWNER TO .*;\n\n`).ReplaceAllString(sql, "")
	sql = regexp.MustCompile(`(?m)^(\\(un)?restrict) \S+$`).ReplaceAllString(sql, "$1")
	return regexp.MustCompile(`(?m)(; Owner: )(`+regexp.QuoteMeta(role)+`|\S*)$`).ReplaceAllString(sql, "$1")
}

// A dump without privileges, owners dropped, restores with a plain
// pg_restore on a server that has never heard of the owner.
func TestDropOwnersRestoresElsewhere(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, toFile := range []bool{false, true} {
		archive := b.rewrite(t, b.dump(t, toFile, "--no-privileges"))
		dst := pgtest.NewDatabase(t, b.fleet.Shards[1])
		out, err := b.pgRestore(t, "-d", dst, archive)
		require.NoError(t, err, out)
		require.NotContains(t, strings.ToLower(out), "error")

		conn, err := pgx.Connect(b.ctx, dst)
		require.NoError(t, err)
		var rows, long int
		var sum, shouted string
		require.NoError(t, conn.QueryRow(b.ctx, `SELECT count(*), md5(string_agg(id || body, ',' ORDER BY id)),
			(SELECT count(*) FROM long_notes), shout('hi') FROM notes`).Scan(&rows, &sum, &long, &shouted))
		require.Equal(t, 100, rows)
		require.Equal(t, 100, long)
		require.Equal(t, "HI", shouted)
		var next int
		require.NoError(t, conn.QueryRow(b.ctx, "INSERT INTO notes (body) VALUES ('x') RETURNING id").Scan(&next))
		require.Equal(t, 101, next, "the sequence goes on")
		require.NoError(t, conn.Close(b.ctx))

		src, err := pgx.Connect(b.ctx, b.srcDSN)
		require.NoError(t, err)
		var want string
		require.NoError(t, src.QueryRow(b.ctx, `SELECT md5(string_agg(id || body, ',' ORDER BY id)) FROM notes`).Scan(&want))
		require.NoError(t, src.Close(b.ctx))
		require.Equal(t, want, sum)
	}
}

func TestDropOwnersRefuses(t *testing.T) {
	t.Parallel()
	b := setup(t)
	archive, err := os.ReadFile(b.dump(t, false))
	require.NoError(t, err)
	require.Equal(t, []byte{1, 14}, archive[5:7], "pg_dump 15 writes archive version 1.14")

	withByte := func(at int, v byte) []byte {
		c := bytes.Clone(archive)
		c[at] = v
		return c
	}
	for name, tt := range map[string]struct {
		in   []byte
		want error
	}{
		"version 1.13":      {withByte(6, 13), pgarchive.ErrUnsupported},
		"version 1.17":      {withByte(6, 17), pgarchive.ErrUnsupported},
		"version 2.14":      {withByte(5, 2), pgarchive.ErrUnsupported},
		"tar format":        {withByte(10, 3), pgarchive.ErrUnsupported},
		"not an archive":    {[]byte("-- PostgreSQL database dump\n"), pgarchive.ErrUnsupported},
		"truncated TOC":     {archive[:200], io.ErrUnexpectedEOF},
		"truncated header":  {archive[:8], io.ErrUnexpectedEOF},
		"empty":             {nil, io.ErrUnexpectedEOF},
		"bad string length": {withByte(55, 0x40), pgarchive.ErrUnsupported}, // the database name's
	} {
		var out bytes.Buffer
		err := pgarchive.DropOwners(&out, bytes.NewReader(tt.in))
		require.Error(t, err, name)
		if tt.want != nil {
			require.True(t, errors.Is(err, tt.want), "%s: %v", name, err)
		}
		require.Zero(t, out.Len(), "%s: nothing written", name)
	}
}
