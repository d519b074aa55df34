package api

import (
	"context"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/rebalancer"
)

// Rebalancer moves tenants and plans the moves that even out the shards;
// rebalancer.Rebalancer implements it.
type Rebalancer interface {
	Move(ctx context.Context, req rebalancer.MoveRequest, wait time.Duration) (provisioner.Result, error)
	Plan(ctx context.Context, o rebalancer.Options) (*rebalancer.Report, error)
	Apply(ctx context.Context, o rebalancer.Options) (*rebalancer.Report, []rebalancer.Started, error)
	Drain(ctx context.Context, shard string) ([]rebalancer.Started, error)
	// Size is a tenant's database's size as plans weigh it.
	Size(ctx context.Context, t *silo.Tenant) (int64, error)
}

type startedMove struct {
	Tenant      string `json:"tenant"`
	From        string `json:"from"`
	To          string `json:"to"`
	OperationID string `json:"operationId,omitempty"`
	Error       string `json:"error,omitempty"`
}

type startedBody struct {
	Moves []startedMove `json:"moves"`
}

func toStarted(started []rebalancer.Started) startedBody {
	out := startedBody{Moves: make([]startedMove, 0, len(started))}
	for _, s := range started {
		out.Moves = append(out.Moves, startedMove{Tenant: s.Tenant, From: s.From, To: s.To, OperationID: s.OperationID, Error: s.Error})
	}
	return out
}

// ApplyRebalance plans and starts the moves that even out the shards.
func (s *Server) ApplyRebalance(c echo.Context) error {
	if s.rebalancer == nil {
		return silo.Errorf(silo.EUNAVAILABLE, "this server does not rebalance")
	}
	var req RebalanceApply
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	var o rebalancer.Options
	if req.By != nil {
		o.By = string(*req.By)
	}
	if req.MaxMoves != nil {
		o.MaxMoves = *req.MaxMoves
	}
	_, started, err := s.rebalancer.Apply(c.Request().Context(), o)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusAccepted, toStarted(started))
}

type planShard struct {
	Shard        string `json:"shard"`
	Region       string `json:"region"`
	Weight       int    `json:"weight"`
	Tenants      int    `json:"tenants"`
	TenantsAfter int    `json:"tenantsAfter"`
	Bytes        int64  `json:"bytes"`
	BytesAfter   int64  `json:"bytesAfter"`
}

type planMove struct {
	Tenant string `json:"tenant"`
	From   string `json:"from"`
	To     string `json:"to"`
	Bytes  int64  `json:"bytes"`
}

type planBody struct {
	By     string      `json:"by"`
	Shards []planShard `json:"shards"`
	Moves  []planMove  `json:"moves"`
}

// PlanRebalance answers the moves that would even out the active shards.
func (s *Server) PlanRebalance(c echo.Context, params PlanRebalanceParams) error {
	if s.rebalancer == nil {
		return silo.Errorf(silo.EUNAVAILABLE, "this server does not plan rebalancing")
	}
	var o rebalancer.Options
	if params.By != nil {
		o.By = string(*params.By)
	}
	if params.MaxMoves != nil {
		o.MaxMoves = *params.MaxMoves
	}
	rep, err := s.rebalancer.Plan(c.Request().Context(), o)
	if err != nil {
		return err
	}
	out := planBody{By: rep.By, Shards: make([]planShard, 0, len(rep.Shards)), Moves: make([]planMove, 0, len(rep.Moves))}
	for _, sh := range rep.Shards {
		out.Shards = append(out.Shards, planShard{Shard: sh.Name, Region: sh.Region, Weight: sh.Weight,
			Tenants: sh.Tenants, TenantsAfter: sh.TenantsAfter, Bytes: sh.Bytes, BytesAfter: sh.BytesAfter})
	}
	for _, m := range rep.Moves {
		out.Moves = append(out.Moves, planMove(m))
	}
	return c.JSON(http.StatusOK, out)
}
