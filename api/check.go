package api

import (
	"context"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/reconcile"
)

// Checker compares the catalog with every shard and repairs what is safe;
// reconcile.Checker implements it.
type Checker interface {
	Check(ctx context.Context) (*reconcile.Report, error)
	Repair(ctx context.Context, rep *reconcile.Report) ([]reconcile.Repair, error)
}

func (s *Server) fleetChecker() (Checker, error) {
	if s.checker == nil {
		return nil, silo.Errorf(silo.EUNAVAILABLE, "this server does not check the fleet")
	}
	return s.checker, nil
}

// CheckFleet answers what disagrees between the catalog and the shards.
func (s *Server) CheckFleet(c echo.Context) error {
	ch, err := s.fleetChecker()
	if err != nil {
		return err
	}
	rep, err := ch.Check(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toCheckReport(rep))
}

// RepairFleet repairs what a check finds that is safe to fix, then checks
// again.
func (s *Server) RepairFleet(c echo.Context) error {
	ch, err := s.fleetChecker()
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	repairs, err := ch.Repair(ctx, nil)
	if err != nil {
		return err
	}
	rep, err := ch.Check(ctx)
	if err != nil {
		return err
	}
	out := CheckRepair{Repairs: make([]CheckRepairResult, 0, len(repairs)), Report: toCheckReport(rep)}
	for _, r := range repairs {
		out.Repairs = append(out.Repairs, CheckRepairResult{
			Kind: CheckFindingKind(r.Kind), Shard: r.Shard, Object: r.Object, Message: r.Message,
			Database: optional(r.Database), TenantId: optional(r.TenantID),
			Outcome: CheckRepairResultOutcome(r.Outcome), Error: optional(r.Error),
		})
	}
	return c.JSON(http.StatusOK, out)
}

func toCheckReport(rep *reconcile.Report) CheckReport {
	out := CheckReport{
		Clean: rep.Clean(), CheckedAt: rep.Started.UTC(), DurationMs: rep.Duration.Milliseconds(),
		Tenants: rep.Tenants, VersionsRead: rep.VersionsRead, InFlight: rep.InFlight,
		Shards: make([]CheckShard, 0, len(rep.Shards)), Findings: make([]CheckFinding, 0, len(rep.Findings)),
	}
	for _, sh := range rep.Shards {
		out.Shards = append(out.Shards, CheckShard{Name: sh.Name, Databases: sh.Databases, Error: optional(sh.Error)})
	}
	for _, f := range rep.Findings {
		out.Findings = append(out.Findings, CheckFinding{
			Kind: CheckFindingKind(f.Kind), Shard: f.Shard, Object: f.Object, Message: f.Message, Repairable: f.Repairable,
			Database: optional(f.Database), TenantId: optional(f.TenantID),
		})
	}
	return out
}

// optional is nil for "", so that empty fields are left out of answers.
func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
