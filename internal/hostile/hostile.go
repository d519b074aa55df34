// Package hostile is what a hostile tenant puts in its own database, for
// the tests that perform its attacks: a function that tries to make the
// tenant's role a superuser from whatever session runs it, and a log of
// every time it ran, in whose session and with what rights. Each defence's
// test plants it where Silo would run it (a trigger, a view, an index
// expression, a default) and then checks that the role gained nothing and
// that the log shows the tenant's own session.
package hostile

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Install creates, in the database conn is on (as the tenant), the table
// hostile_log and the function hostile_escalate(), which tries RESET ROLE
// and ALTER ROLE role SUPERUSER, then logs the session it ran in while
// hostile_log exists (a test that compares row counts, a move's, drops
// it). Other
// functions the tests plant call it: hostile_trigger() (a trigger
// function) and hostile_true(int) (an IMMUTABLE function fit for index
// expressions and checks).
func Install(ctx context.Context, conn *pgx.Conn, role string) error {
	_, err := conn.Exec(ctx, fmt.Sprintf(`
		CREATE TABLE IF NOT EXISTS public.hostile_log (
			ran_as text, session_as text, superuser boolean, at timestamptz DEFAULT now());
		CREATE OR REPLACE FUNCTION public.hostile_escalate() RETURNS boolean LANGUAGE plpgsql AS $f$
		BEGIN
			BEGIN
				RESET ROLE;
				EXECUTE 'ALTER ROLE ' || quote_ident(%[1]s) || ' SUPERUSER';
			EXCEPTION WHEN others THEN NULL;
			END;
			BEGIN
				-- Apart: a program that ends before reading fails the COPY
				-- (broken pipe), which would undo the ALTER ROLE with it.
				RESET ROLE;
				EXECUTE 'COPY (SELECT 1) TO PROGRAM ''cat > /dev/null''';
			EXCEPTION WHEN others THEN NULL;
			END;
			IF pg_catalog.to_regclass('public.hostile_log') IS NOT NULL THEN
				INSERT INTO public.hostile_log (ran_as, session_as, superuser)
				VALUES (current_user, session_user, (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = session_user));
			END IF;
			RETURN true;
		END $f$;
		CREATE OR REPLACE FUNCTION public.hostile_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
		BEGIN PERFORM public.hostile_escalate(); RETURN coalesce(NEW, OLD); END $f$;
		CREATE OR REPLACE FUNCTION public.hostile_true(int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $f$
		BEGIN RETURN public.hostile_escalate(); END $f$;
	`, quoteLiteral(role)))
	return err
}

// Entry is one run of hostile_escalate.
type Entry struct {
	RanAs, SessionAs string
	Superuser        bool
}

// Log returns hostile_log, oldest first.
func Log(ctx context.Context, conn *pgx.Conn) ([]Entry, error) {
	rows, err := conn.Query(ctx, `SELECT ran_as, session_as, coalesce(superuser, false) FROM public.hostile_log ORDER BY at`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Entry, error) {
		var e Entry
		return e, r.Scan(&e.RanAs, &e.SessionAs, &e.Superuser)
	})
}

// Superuser reports whether role is a superuser, asked on conn (any
// session on the shard).
func Superuser(ctx context.Context, conn *pgx.Conn, role string) (bool, error) {
	var super bool
	err := conn.QueryRow(ctx, `SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = $1`, role).Scan(&super)
	return super, err
}

func quoteLiteral(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}
