package api

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

func toTenantKey(k *shardmap.TenantKey) TenantKey {
	return TenantKey{Id: k.ID, Name: k.Name, CreatedAt: k.CreatedAt, RevokedAt: k.RevokedAt, LastUsedAt: k.LastUsedAt}
}

// CreateTenantKey makes an API key for the tenant's data API and answers
// its token, this once.
func (s *Server) CreateTenantKey(c echo.Context, id TenantID) error {
	var body TenantKeyCreate
	if err := decodeJSON(c, &body); err != nil {
		return err
	}
	var name string
	if body.Name != nil {
		if name = *body.Name; name == "" {
			return silo.Errorf(silo.EINVALID, "name must not be empty: omit it for %q", shardmap.DefaultKeyName)
		}
	}
	key, token, err := s.catalog.CreateTenantKey(c.Request().Context(), id, name)
	if err != nil {
		return err
	}
	c.Response().Header().Set(echo.HeaderCacheControl, "no-store")
	return c.JSON(http.StatusCreated, TenantKeyCreated{Id: key.ID, Name: key.Name, CreatedAt: key.CreatedAt, Token: token})
}

// ListTenantKeys answers one page of the tenant's keys, without secrets.
func (s *Server) ListTenantKeys(c echo.Context, id TenantID, params ListTenantKeysParams) error {
	list, err := s.catalog.ListTenantKeys(c.Request().Context(), id, pageOf(params.Limit, params.Cursor))
	if err != nil {
		return err
	}
	out := TenantKeyList{Items: make([]TenantKey, 0, len(list.Items)), NextCursor: nextCursor(list.NextCursor)}
	for i := range list.Items {
		out.Items = append(out.Items, toTenantKey(&list.Items[i]))
	}
	return c.JSON(http.StatusOK, out)
}

// RevokeTenantKey revokes one of the tenant's keys. This server forgets
// the key's cached checks at once, whatever the outcome (a revocation that
// timed out may still have committed); others, within their key cache
// lifetime.
func (s *Server) RevokeTenantKey(c echo.Context, id TenantID, keyID string) error {
	err := s.catalog.RevokeTenantKey(c.Request().Context(), id, keyID)
	s.keys.forget(keyID)
	if err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}
