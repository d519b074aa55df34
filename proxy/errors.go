package proxy

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/silo-db/silo"
)

// SQLSTATEs the endpoint answers with itself; the shards' own pass through.
const (
	codeProtocolViolation   = "08P01"
	codeConnectionFailure   = "08006"
	codeInvalidPassword     = "28P01"
	codeInvalidAuthSpec     = "28000"
	codeTooManyConnections  = "53300"
	codeProgramLimit        = "54000"
	codeNotInPrerequisite   = "55000"
	codeCannotConnectNow    = "57P03"
	codeAdminShutdown       = "57P01"
	codeFeatureNotSupported = "0A000"
	codeInvalidCatalogName  = "3D000"
	codeInternal            = "XX000"
)

// sqlError is an error the endpoint sends to a client.
type sqlError struct {
	fatal   bool
	code    string
	message string
	detail  string
	hint    string
}

func (e *sqlError) Error() string { return e.code + ": " + e.message }

func (e *sqlError) response() *pgproto3.ErrorResponse {
	sev := "ERROR"
	if e.fatal {
		sev = "FATAL"
	}
	return &pgproto3.ErrorResponse{Severity: sev, SeverityUnlocalized: sev, Code: e.code,
		Message: e.message, Detail: e.detail, Hint: e.hint}
}

func fatalf(code, format string, args ...any) *sqlError {
	return &sqlError{fatal: true, code: code, message: fmt.Sprintf(format, args...)}
}

func errorf(code, format string, args ...any) *sqlError {
	return &sqlError{code: code, message: fmt.Sprintf(format, args...)}
}

// authFailed is the one answer to an unknown tenant, a wrong key, a key of
// another tenant's and a deleted tenant, so that none tells a tenant id
// that exists from one that does not.
func authFailed(user string) *sqlError {
	return fatalf(codeInvalidPassword, "password authentication failed for user %q", user)
}

// fromSilo maps an error of Silo's (the router's, the catalog's) to what a
// client is told. A tenant that is suspended or gone ends the session;
// the rest (a busy budget, a shard that is down, a move that outlasts the
// hold) fail the statement and leave the client connected. The server's
// own errors pass as they are; one that a *silo.Error wraps (a shard that
// refused Silo's login) is a cause for the logs, and the client is told
// the *silo.Error.
func fromSilo(err error) *sqlError {
	if se, ok := errors.AsType[*sqlError](err); ok {
		return se
	}
	if _, ok := errors.AsType[*silo.Error](err); !ok {
		if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
			return &sqlError{fatal: pe.Severity == "FATAL", code: pe.Code, message: pe.Message, detail: pe.Detail, hint: pe.Hint}
		}
	}
	msg := silo.ErrorMessage(err)
	switch silo.ErrorCode(err) {
	case silo.ESUSPENDED:
		return &sqlError{fatal: true, code: codeNotInPrerequisite, message: msg,
			hint: "A suspended tenant's database accepts no connections until it is resumed."}
	case silo.ENOTFOUND:
		return &sqlError{fatal: true, code: codeInvalidCatalogName, message: msg}
	case silo.EUNAVAILABLE, silo.ETIMEOUT:
		e := &sqlError{code: codeCannotConnectNow, message: msg}
		if se, ok := errors.AsType[*silo.Error](err); ok && se.RetryAfter > 0 {
			e.hint = fmt.Sprintf("Retry in %s.", se.RetryAfter)
		}
		return e
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return errorf(codeCannotConnectNow, "%s", msg)
	}
	return errorf(codeInternal, "%s", msg)
}
