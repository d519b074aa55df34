package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// decodeJSON reads one JSON object into v, refusing unknown fields and
// trailing data with EMALFORMED.
func decodeJSON(c echo.Context, v any) error {
	dec := json.NewDecoder(c.Request().Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return silo.Errorf(silo.ETOOLARGE, "the request body is over the limit of %d bytes", mbe.Limit)
		}
		if errors.Is(err, io.EOF) {
			return silo.Errorf(silo.EMALFORMED, "the request body is empty: a JSON object is required")
		}
		return silo.Errorf(silo.EMALFORMED, "the request body is not valid JSON for this operation: %v", err)
	}
	if dec.More() {
		return silo.Errorf(silo.EMALFORMED, "the request body has data after its JSON object")
	}
	return nil
}

// shard answers sh with this server's pool of connections to it, when it
// has one.
func (s *Server) shard(sh *silo.Shard) Shard {
	out := toShard(sh)
	if s.router == nil {
		return out
	}
	if st, ok := s.router.ShardStats(sh.Name); ok {
		out.Pool = &ShardPool{ConnectionsInUse: st.InUse, ConnectionsIdle: st.Idle, BreakerOpen: st.BreakerOpen}
	}
	return out
}

func toShard(sh *silo.Shard) Shard {
	return Shard{
		Name:        sh.Name,
		Dsn:         silo.RedactDSN(sh.DSN),
		Region:      sh.Region,
		Weight:      sh.Weight,
		State:       ShardState(sh.State),
		TenantCount: sh.TenantCount,
		CreatedAt:   sh.CreatedAt,
		UpdatedAt:   sh.UpdatedAt,
	}
}

func pageOf(limit *int, cursor *string) silo.Page {
	var p silo.Page
	if limit != nil {
		p.Limit = *limit
		if p.Limit == 0 {
			p.Limit = -1 // an explicit 0 is out of range, not "the default"
		}
	}
	if cursor != nil {
		p.Cursor = *cursor
	}
	return p
}

func nextCursor(c string) *string {
	if c == "" {
		return nil
	}
	return &c
}

// ListShards answers one page of shards.
func (s *Server) ListShards(c echo.Context, params ListShardsParams) error {
	list, err := s.catalog.ListShards(c.Request().Context(), pageOf(params.Limit, params.Cursor))
	if err != nil {
		return err
	}
	out := ShardList{Items: make([]Shard, 0, len(list.Items)), NextCursor: nextCursor(list.NextCursor)}
	for i := range list.Items {
		out.Items = append(out.Items, s.shard(&list.Items[i]))
	}
	return c.JSON(http.StatusOK, out)
}

// CreateShard registers a shard.
func (s *Server) CreateShard(c echo.Context) error {
	var req ShardCreate
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	sh := silo.Shard{Name: req.Name, DSN: req.Dsn}
	if req.Region != nil {
		sh.Region = *req.Region
		if sh.Region == "" {
			return silo.Errorf(silo.EINVALID, "region must not be empty: omit it for %q", silo.DefaultRegion)
		}
	}
	if req.Weight != nil {
		sh.Weight = *req.Weight
		if sh.Weight == 0 {
			return silo.Errorf(silo.EINVALID, "weight 0 must be between 1 and %d", silo.MaxWeight)
		}
	}
	created, err := s.catalog.CreateShard(c.Request().Context(), sh)
	if err != nil {
		return err
	}
	c.Response().Header().Set(echo.HeaderLocation, "/v1/shards/"+created.Name)
	return c.JSON(http.StatusCreated, toShard(created))
}

// GetShard answers one shard.
func (s *Server) GetShard(c echo.Context, name ShardName) error {
	sh, err := s.catalog.GetShard(c.Request().Context(), name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, s.shard(sh))
}

// DeleteShard removes a shard that holds no tenants.
func (s *Server) DeleteShard(c echo.Context, name ShardName) error {
	if err := s.catalog.DeleteShard(c.Request().Context(), name); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// DrainShard marks a shard draining.
func (s *Server) DrainShard(c echo.Context, name ShardName) error {
	ctx := c.Request().Context()
	sh, err := s.catalog.SetShardState(ctx, name, silo.ShardDraining)
	if err != nil {
		return err
	}
	if s.rebalancer != nil {
		started, err := s.rebalancer.Drain(ctx, name)
		if err != nil {
			return err
		}
		for _, m := range started {
			if m.Error != "" {
				s.log.WarnContext(ctx, "drain: a tenant did not start moving", "shard", name, "tenant", m.Tenant, "err", m.Error)
			}
		}
	}
	return c.JSON(http.StatusOK, s.shard(sh))
}

// ActivateShard returns a shard to service.
func (s *Server) ActivateShard(c echo.Context, name ShardName) error {
	return s.setShardState(c, name, silo.ShardActive)
}

// DisableShard keeps a shard out of placement.
func (s *Server) DisableShard(c echo.Context, name ShardName) error {
	return s.setShardState(c, name, silo.ShardDisabled)
}

func (s *Server) setShardState(c echo.Context, name string, state silo.ShardState) error {
	sh, err := s.catalog.SetShardState(c.Request().Context(), name, state)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, s.shard(sh))
}

// ListAudit answers one page of audit entries, newest first.
func (s *Server) ListAudit(c echo.Context, params ListAuditParams) error {
	f := shardmap.AuditFilter{}
	if params.Action != nil {
		f.Action = *params.Action
	}
	if params.Target != nil {
		f.Target = *params.Target
	}
	if params.Actor != nil {
		f.Actor = *params.Actor
	}
	list, err := s.catalog.ListAudit(c.Request().Context(), f, pageOf(params.Limit, params.Cursor))
	if err != nil {
		return err
	}
	out := AuditList{Items: make([]AuditEntry, 0, len(list.Items)), NextCursor: nextCursor(list.NextCursor)}
	for _, e := range list.Items {
		entry := AuditEntry{
			Id: e.ID, Time: e.Time, Actor: e.Actor, Action: e.Action, Target: e.Target,
			Params: e.Params, Result: e.Result,
		}
		if e.Error != "" {
			entry.Error = &e.Error
		}
		if e.RequestID != "" {
			entry.RequestId = &e.RequestID
		}
		out.Items = append(out.Items, entry)
	}
	return c.JSON(http.StatusOK, out)
}
