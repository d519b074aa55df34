package silo

import (
	"errors"
	"fmt"
	"time"
)

// Error codes. They are stable: clients match on them, the HTTP layer maps
// them to statuses, and they appear in the audit log.
const (
	EMALFORMED    = "EMALFORMED"    // the request could not be parsed
	EINVALID      = "EINVALID"      // the request was understood but breaks a rule
	EUNAUTHORIZED = "EUNAUTHORIZED" // missing or wrong credentials
	EFORBIDDEN    = "EFORBIDDEN"    // credentials valid, but not for this target
	ENOTFOUND     = "ENOTFOUND"     // no such object
	ECONFLICT     = "ECONFLICT"     // the object exists, or its state forbids the change
	ESUSPENDED    = "ESUSPENDED"    // the tenant is suspended: its data is unreachable until resumed
	ETOOLARGE     = "ETOOLARGE"     // a body or result over its limit
	EUNAVAILABLE  = "EUNAVAILABLE"  // a dependency (catalog, shard) cannot be reached
	ETIMEOUT      = "ETIMEOUT"      // the operation ran past its deadline
	EINTERNAL     = "EINTERNAL"     // a bug or an unexpected failure
)

// Error is Silo's error: a stable code and a message meant for the user. It
// may wrap an underlying cause, which is for logs and never shown to clients
// of the HTTP API unless the message includes it.
type Error struct {
	Code    string
	Message string
	Err     error
	// RetryAfter, when set, is how soon a retry may succeed (an
	// unavailable shard's breaker reopens for a probe then); HTTP answers
	// carry it as Retry-After.
	RetryAfter time.Duration
}

// Error implements the error interface.
func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// WrapError returns an *Error with the given code and message that wraps err.
func WrapError(err error, code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: err}
}

// ErrorCode returns the code of the first *Error in err's chain, "" for a
// nil error, and EINTERNAL for any other error.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the user-facing message of the first *Error in err's
// chain, and "internal error" for any other error, so causes that may hold
// secrets or internals are not shown to clients.
func ErrorMessage(err error) string {
	if err == nil {
		return ""
	}
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Message
	}
	return "internal error"
}
