package api

import (
	"net"
	"net/http"
	"net/url"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/silo-db/silo"
)

// sslMode is the sslmode a connection string asks for: require when the
// endpoint offers TLS.
func sslMode(tls bool) string {
	if tls {
		return "require"
	}
	return "disable"
}

// DSN is a libpq URL for a tenant through the wire-protocol endpoint at
// host:port, with token as its password, asking for mode (sslMode).
func DSN(endpoint, tenantID, token, mode string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(tenantID, token), Host: endpoint, Path: "/" + tenantID,
		RawQuery: "sslmode=" + mode}
	return u.String()
}

// ConnectTenant makes a key for the tenant and answers a connection string
// of the wire-protocol endpoint with it.
func (s *Server) ConnectTenant(c echo.Context, id TenantID) error {
	if s.pgEndpoint == "" {
		return silo.Errorf(silo.ECONFLICT, "this server has no wire-protocol endpoint: start it with --pg-listen")
	}
	host, portStr, err := net.SplitHostPort(s.pgEndpoint)
	if err != nil {
		return silo.WrapError(err, silo.EINTERNAL, "the endpoint's address %q is not host:port", s.pgEndpoint)
	}
	port, _ := strconv.Atoi(portStr)
	var body TenantKeyCreate
	if err := decodeJSON(c, &body); err != nil {
		return err
	}
	name := "connect"
	if body.Name != nil {
		if name = *body.Name; name == "" {
			return silo.Errorf(silo.EINVALID, "name must not be empty: omit it for %q", "connect")
		}
	}
	key, token, err := s.catalog.CreateTenantKey(c.Request().Context(), id, name)
	if err != nil {
		return err
	}
	mode := sslMode(s.pgTLS)
	c.Response().Header().Set(echo.HeaderCacheControl, "no-store")
	return c.JSON(http.StatusCreated, TenantConnection{
		Id: key.ID, Name: key.Name, CreatedAt: key.CreatedAt, Token: token,
		Dsn: DSN(s.pgEndpoint, id, token, mode), Host: host, Port: port, User: id, Database: id,
		Sslmode: TenantConnectionSslmode(mode),
	})
}
