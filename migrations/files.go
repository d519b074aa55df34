package migrations

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/pressly/goose/v3"
)

// fileNameRE is the shape of a tenant migration's name; goose reads the
// version from the digits.
var fileNameRE = regexp.MustCompile(`^[0-9]+_.+\.sql$`)

// migrationNameRE is the grammar of the NAME in `silo migrate create NAME`.
var migrationNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// migrationFile is what a static read of one goose SQL file learns.
type migrationFile struct {
	name    string
	version int64
	// downLine is the line of the -- +goose Down annotation, 0 when the file
	// has none; downStatements counts the statements under it.
	downLine       int
	downStatements int
}

// CheckFiles checks a directory of tenant migrations without touching a
// database, so that a mistake is reported before any tenant is migrated.
// Every *.sql file must be named NNNNN_name.sql with a positive version that
// no other file has, and hold exactly one "-- +goose Up" annotation with at
// least one statement under it, at most one "-- +goose Down" after it,
// balanced, unnested "-- +goose StatementBegin"/"StatementEnd" pairs, and
// statements that end with a semicolon. Files that are not .sql are ignored;
// a directory without .sql files is an error.
//
// It returns every problem found, one per file, joined with errors.Join and
// in file name order; a problem in a file's text names the file and the line
// ("00003_bad.sql:7: ..."). The errors carry no silo code: callers say what
// a bad file means to them.
func CheckFiles(fsys fs.FS) error {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return fmt.Errorf("tenant migrations: %w", err)
	}
	if len(names) == 0 {
		return errors.New("tenant migrations: no goose SQL file (NNNNN_name.sql) found")
	}
	slices.Sort(names)
	var errs []error
	byVersion := make(map[int64]string, len(names))
	for _, name := range names {
		f, err := readMigrationFile(fsys, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if other, ok := byVersion[f.version]; ok {
			errs = append(errs, fmt.Errorf("%s: version %d is also the version of %s: each migration needs its own", name, f.version, other))
			continue
		}
		byVersion[f.version] = name
	}
	return errors.Join(errs...)
}

// CheckDown checks that a migration down from version from to version to
// (to < from) can run: every file with a version in (to, from] must have a
// "-- +goose Down" section with at least one statement, or goose would record
// the migration as undone without changing the schema. It also checks that
// version from has a file, since an applied migration without one cannot be
// undone. It reads only those files, and reports the first problem in the
// order the migration would meet them, highest version first. The errors
// carry no silo code.
func CheckDown(fsys fs.FS, from, to int64) error {
	if to < 0 || to >= from {
		return fmt.Errorf("down from version %d to %d: the target must be at least 0 and below the version it starts from", from, to)
	}
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return fmt.Errorf("tenant migrations: %w", err)
	}
	type named struct {
		name    string
		version int64
	}
	var undo []named
	for _, name := range names {
		v, err := fileVersion(name)
		if err != nil {
			return err
		}
		if v > to && v <= from {
			undo = append(undo, named{name, v})
		}
	}
	slices.SortFunc(undo, func(a, b named) int { return cmp.Compare(b.version, a.version) })
	if len(undo) == 0 || undo[0].version != from {
		return fmt.Errorf("down from version %d: no migration file has version %d, so it cannot be undone", from, from)
	}
	for _, u := range undo {
		f, err := readMigrationFile(fsys, u.name)
		if err != nil {
			return err
		}
		switch {
		case f.downLine == 0:
			return fmt.Errorf("%s has no down section: it cannot be undone", f.name)
		case f.downStatements == 0:
			return fmt.Errorf("%s:%d: the down section has no statement: it cannot be undone", f.name, f.downLine)
		}
	}
	return nil
}

// fileVersion returns the version of a migration file named NNNNN_name.sql.
func fileVersion(name string) (int64, error) {
	if !fileNameRE.MatchString(name) {
		return 0, fmt.Errorf("%s: a tenant migration is named NNNNN_name.sql, such as 00001_create_notes.sql", name)
	}
	v, err := goose.NumericComponent(name)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return v, nil
}

// readMigrationFile reads and checks one goose SQL file. It recognises
// annotations as goose's parser does (a line that starts with "--" and holds
// "+goose"), so a file it accepts is one goose can run.
func readMigrationFile(fsys fs.FS, name string) (*migrationFile, error) {
	v, err := fileVersion(name)
	if err != nil {
		return nil, err
	}
	f, err := fsys.Open(name)
	if err != nil {
		return nil, fmt.Errorf("tenant migrations: %w", err)
	}
	defer f.Close()

	mf := &migrationFile{name: name, version: v}
	fail := func(line int, format string, args ...any) (*migrationFile, error) {
		return nil, fmt.Errorf("%s:%d: %s", name, line, fmt.Sprintf(format, args...))
	}
	var (
		upLine       int  // line of -- +goose Up, 0 before it
		upStatements int  // statements under Up
		blockLine    int  // line of the open StatementBegin, 0 outside a block
		blockText    bool // the open block holds SQL
		stmtLine     int  // first line of a statement not yet ended by ';', 0 if none
	)
	// statement counts one statement of the current section.
	statement := func() {
		if mf.downLine > 0 {
			mf.downStatements++
		} else {
			upStatements++
		}
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 4<<20) // goose's longest line
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "--") && strings.Contains(line, "+goose") {
			a, err := annotation(line)
			if err != nil {
				return fail(n, "%v", err)
			}
			switch a {
			case "Up":
				if upLine > 0 {
					return fail(n, "a second -- +goose Up annotation (the first is on line %d)", upLine)
				}
				upLine = n
			case "Down":
				switch {
				case upLine == 0:
					return fail(n, "-- +goose Down before -- +goose Up")
				case mf.downLine > 0:
					return fail(n, "a second -- +goose Down annotation (the first is on line %d)", mf.downLine)
				case blockLine > 0:
					return fail(n, "-- +goose Down inside the StatementBegin block of line %d: end it with -- +goose StatementEnd", blockLine)
				case stmtLine > 0:
					return fail(stmtLine, "the statement does not end with a semicolon")
				}
				if upStatements == 0 {
					return fail(upLine, "the up section has no statement")
				}
				mf.downLine = n
			case "StatementBegin":
				switch {
				case upLine == 0:
					return fail(n, "-- +goose StatementBegin before -- +goose Up")
				case blockLine > 0:
					return fail(n, "-- +goose StatementBegin inside the block of line %d: blocks do not nest", blockLine)
				case stmtLine > 0:
					return fail(stmtLine, "the statement does not end with a semicolon")
				}
				blockLine, blockText = n, false
			case "StatementEnd":
				if blockLine == 0 {
					return fail(n, "-- +goose StatementEnd without a -- +goose StatementBegin")
				}
				if blockText {
					statement()
				}
				blockLine = 0
			}
			continue
		}
		if trimmed == "" || (stmtLine == 0 && strings.HasPrefix(trimmed, "--")) {
			continue
		}
		switch {
		case upLine == 0:
			return fail(n, "SQL before the -- +goose Up annotation")
		case blockLine > 0:
			if !strings.HasPrefix(trimmed, "--") {
				blockText = true
			}
		default:
			if stmtLine == 0 {
				stmtLine = n
			}
			if endsWithSemicolon(line) {
				statement()
				stmtLine = 0
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fail(n+1, "%v", err)
	}
	switch {
	case upLine == 0:
		return fail(1, "no -- +goose Up annotation: a migration's statements follow a line \"-- +goose Up\"")
	case blockLine > 0:
		return fail(blockLine, "-- +goose StatementBegin without a -- +goose StatementEnd")
	case stmtLine > 0:
		return fail(stmtLine, "the statement does not end with a semicolon")
	case upStatements == 0:
		return fail(upLine, "the up section has no statement")
	}
	return mf, nil
}

// annotation returns the command of a goose annotation line, as goose reads
// it: "-- +goose up" is "Up".
func annotation(line string) (string, error) {
	if strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
		return "", fmt.Errorf("the annotation %q must start at the beginning of the line", strings.TrimSpace(line))
	}
	cmd := strings.ReplaceAll(line, "--", "")
	cmd = strings.Replace(cmd, "+goose", "", 1)
	if strings.Contains(cmd, "+goose") {
		return "", fmt.Errorf("%q holds more than one +goose annotation", line)
	}
	cmd = strings.TrimSpace(cmd)
	for _, a := range []string{"Up", "Down", "StatementBegin", "StatementEnd", "NO TRANSACTION", "ENVSUB ON", "ENVSUB OFF"} {
		if strings.EqualFold(cmd, a) {
			return a, nil
		}
	}
	return "", fmt.Errorf("unknown goose annotation %q: goose knows Up, Down, StatementBegin, StatementEnd, NO TRANSACTION, ENVSUB ON and ENVSUB OFF (a comment must not contain \"+goose\")", line)
}

// endsWithSemicolon reports whether line ends a statement: its last word
// before any "--" comment ends with ';'. It is goose's rule.
func endsWithSemicolon(line string) bool {
	prev := ""
	for word := range strings.FieldsSeq(line) {
		if strings.HasPrefix(word, "--") {
			break
		}
		prev = word
	}
	return strings.HasSuffix(prev, ";")
}

// CreateFile writes the skeleton of a new goose SQL migration in dir, as
// `silo migrate create NAME` does, and returns its path. name must match
// ^[a-z][a-z0-9_]{0,62}$. The file's version is one above the highest
// version among dir's *.sql files, written with at least five digits
// (00007_add_tags.sql). dir must be an existing directory. CreateFile never
// overwrites a file; two calls racing in one directory may pick the same
// version, which CheckFiles then reports.
func CreateFile(dir, name string) (path string, err error) {
	if !migrationNameRE.MatchString(name) {
		return "", fmt.Errorf("migration name %q: it must be a lower-case letter followed by up to 62 lower-case letters, digits or underscores ([a-z][a-z0-9_]{0,62})", name)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("tenant migrations: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("tenant migrations: %s is not a directory", dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("tenant migrations: %w", err)
	}
	var latest int64
	for _, e := range entries {
		// A name without a version takes none; CheckFiles reports it.
		if v, err := fileVersion(e.Name()); err == nil {
			latest = max(latest, v)
		}
	}
	path = filepath.Join(dir, fmt.Sprintf("%05d_%s.sql", latest+1, name))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", fmt.Errorf("create migration: %w", err)
	}
	content := "-- " + name + "\n" +
		"-- Write the statements that make the change under the Up annotation, and those that undo it under Down.\n" +
		"\n-- +goose Up\n\n-- +goose Down\n"
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		os.Remove(path)
		return "", fmt.Errorf("create migration: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("create migration: %w", err)
	}
	return path, nil
}
