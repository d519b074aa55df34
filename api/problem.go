package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/silo-db/silo"
)

// statusOf maps Silo's error codes to HTTP statuses: the one table.
var statusOf = map[string]int{
	silo.EMALFORMED:    http.StatusBadRequest,
	silo.EUNAUTHORIZED: http.StatusUnauthorized,
	silo.EFORBIDDEN:    http.StatusForbidden,
	silo.ENOTFOUND:     http.StatusNotFound,
	silo.ECONFLICT:     http.StatusConflict,
	silo.ESUSPENDED:    http.StatusLocked,
	silo.ETOOLARGE:     http.StatusRequestEntityTooLarge,
	silo.EINVALID:      http.StatusUnprocessableEntity,
	silo.EINTERNAL:     http.StatusInternalServerError,
	silo.EUNAVAILABLE:  http.StatusServiceUnavailable,
	silo.ETIMEOUT:      http.StatusGatewayTimeout,
}

// codeOfStatus gives errors raised by echo itself (no route, bad parameter,
// body limit) a Silo code.
func codeOfStatus(status int) string {
	switch {
	case status == http.StatusNotFound:
		return silo.ENOTFOUND
	case status == http.StatusUnauthorized:
		return silo.EUNAUTHORIZED
	case status == http.StatusRequestEntityTooLarge:
		return silo.ETOOLARGE
	case status == http.StatusServiceUnavailable:
		return silo.EUNAVAILABLE
	case status < 500:
		return silo.EMALFORMED
	}
	return silo.EINTERNAL
}

// errorHandler answers every error as application/problem+json. Messages of
// *silo.Error are meant for users; other errors are logged and answered
// with a generic message so internals never leak.
func (s *Server) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var status int
	var code, detail string
	if he, ok := errors.AsType[*echo.HTTPError](err); ok {
		status, code = he.Code, codeOfStatus(he.Code)
		if msg, ok := he.Message.(string); ok {
			detail = msg
		} else {
			detail = http.StatusText(status)
		}
		if he.Internal != nil {
			err = he.Internal
		}
	} else {
		code = silo.ErrorCode(err)
		status = statusOf[code]
		detail = silo.ErrorMessage(err)
	}
	if status >= 500 {
		s.log.ErrorContext(c.Request().Context(), "request failed", "request_id", requestID(c), "route", c.Path(), "code", code, "err", err)
	}
	if code == silo.EUNAUTHORIZED {
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="silo"`)
	}
	if se, ok := errors.AsType[*silo.Error](err); ok && se.RetryAfter > 0 {
		// The error knows when a retry may succeed (a shard's breaker).
		c.Response().Header().Set("Retry-After", strconv.Itoa(int(max(time.Second, se.RetryAfter).Round(time.Second).Seconds())))
	} else if code == silo.EUNAVAILABLE && s.dataRoutes[c.Request().Method+" "+c.Path()] {
		// Shards come back and connections come free: the data API's
		// clients should retry, a moment later.
		c.Response().Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	}
	c.Set(ctxErrorCode, code)
	p := Problem{
		Type:      "about:blank",
		Title:     http.StatusText(status),
		Status:    status,
		Code:      ProblemCode(code),
		Detail:    &detail,
		Instance:  ptr(c.Request().URL.Path),
		RequestId: ptr(requestID(c)),
	}
	if id, ok := c.Get(ctxOperationID).(string); ok {
		p.OperationId = &id
	}
	if se, ok := errors.AsType[*statementError](err); ok {
		p.Statement = se.index
		if se.pg != nil {
			p.Sqlstate = &se.pg.Code
			if se.pg.Position > 0 {
				p.Position = ptr(int(se.pg.Position))
			}
		}
	}
	c.Response().Header().Set(echo.HeaderContentType, "application/problem+json")
	if c.Request().Method == http.MethodHead {
		err = c.NoContent(status)
	} else {
		err = c.JSON(status, p)
	}
	if err != nil {
		s.log.WarnContext(c.Request().Context(), "write problem", "request_id", requestID(c), "err", err)
	}
}

func ptr[T any](v T) *T { return &v }
