package api

import (
	"cmp"
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/migrations"
)

// Migrations runs tenant schema migrations across the fleet; the
// migrations.Runner implements it.
type Migrations interface {
	StartRun(ctx context.Context, o migrations.RunOptions) (*silo.MigrationRun, error)
	Run(ctx context.Context, id string) (*silo.MigrationRun, error)
	Runs(ctx context.Context, limit int) ([]*silo.MigrationRun, error)
	StopRun(ctx context.Context, id string) (*silo.MigrationRun, error)
	Status(ctx context.Context) (*silo.MigrationStatus, error)
	Drift(ctx context.Context) (*silo.DriftReport, error)
}

func (s *Server) migrator() (Migrations, error) {
	if s.migrations == nil {
		return nil, silo.Errorf(silo.EUNAVAILABLE, "this server does not run tenant migrations")
	}
	return s.migrations, nil
}

func toMigrationRun(r *silo.MigrationRun) MigrationRun {
	out := MigrationRun{
		Id:              uuid.MustParse(r.ID),
		Direction:       MigrationRunDirection(r.Direction),
		TargetVersion:   r.TargetVersion,
		State:           MigrationRunState(r.State),
		Concurrency:     r.Concurrency,
		PerShard:        r.PerShard,
		Canary:          r.Canary,
		ContinueOnError: r.ContinueOnError,
		CreatedBy:       r.CreatedBy,
		CreatedAt:       r.CreatedAt,
		UpdatedAt:       r.UpdatedAt,
		FinishedAt:      r.FinishedAt,
	}
	if r.Error != "" {
		out.Error = &r.Error
	}
	if r.ETA != nil {
		eta := int64(*r.ETA / time.Second)
		out.EtaSeconds = &eta
	}
	p := &out.Progress
	p.Total, p.Pending, p.Running, p.Done, p.Failed, p.Skipped = r.Total, r.Pending, r.Running, r.Done, r.Failed, r.Skipped
	return out
}

// StartMigrationRun starts a run; it goes on in the background.
func (s *Server) StartMigrationRun(c echo.Context) error {
	m, err := s.migrator()
	if err != nil {
		return err
	}
	var req MigrationRunCreate
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	o := migrations.RunOptions{To: req.To, Canary: req.Canary}
	if req.Direction != nil {
		o.Direction = string(*req.Direction)
	}
	if req.Concurrency != nil {
		if o.Concurrency = *req.Concurrency; o.Concurrency == 0 {
			return silo.Errorf(silo.EINVALID, "concurrency 0 must be between 1 and %d", migrations.MaxConcurrency)
		}
	}
	if req.PerShard != nil {
		if o.PerShard = *req.PerShard; o.PerShard == 0 {
			return silo.Errorf(silo.EINVALID, "perShard 0 must be between 1 and %d", migrations.MaxConcurrency)
		}
	}
	if req.ContinueOnError != nil {
		o.ContinueOnError = *req.ContinueOnError
	}
	run, err := m.StartRun(c.Request().Context(), o)
	if err != nil {
		return err
	}
	c.Response().Header().Set(echo.HeaderLocation, "/v1/migrations/runs/"+run.ID)
	return c.JSON(http.StatusAccepted, toMigrationRun(run))
}

// GetMigrationRun answers a run and its progress.
func (s *Server) GetMigrationRun(c echo.Context, id RunID) error {
	m, err := s.migrator()
	if err != nil {
		return err
	}
	run, err := m.Run(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toMigrationRun(run))
}

// StopMigrationRun stops a run in progress.
func (s *Server) StopMigrationRun(c echo.Context, id RunID) error {
	m, err := s.migrator()
	if err != nil {
		return err
	}
	run, err := m.StopRun(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toMigrationRun(run))
}

// ListMigrationRuns answers the latest runs, newest first.
func (s *Server) ListMigrationRuns(c echo.Context, params ListMigrationRunsParams) error {
	m, err := s.migrator()
	if err != nil {
		return err
	}
	limit := silo.DefaultPageLimit
	if params.Limit != nil {
		limit = *params.Limit
	}
	runs, err := m.Runs(c.Request().Context(), limit)
	if err != nil {
		return err
	}
	out := MigrationRunList{Items: make([]MigrationRun, 0, len(runs))}
	for _, r := range runs {
		out.Items = append(out.Items, toMigrationRun(r))
	}
	return c.JSON(http.StatusOK, out)
}

// GetMigrationStatus answers the fleet's tenant schema status.
func (s *Server) GetMigrationStatus(c echo.Context) error {
	m, err := s.migrator()
	if err != nil {
		return err
	}
	st, err := m.Status(c.Request().Context())
	if err != nil {
		return err
	}
	out := MigrationStatus{LatestVersion: st.LatestVersion, TargetVersion: st.TargetVersion, Behind: st.Behind,
		Failures: make([]MigrationFailure, 0, len(st.Failures))}
	out.Shards = make([]struct {
		Shard    string `json:"shard"`
		Versions []struct {
			Tenants int   `json:"tenants"`
			Version int64 `json:"version"`
		} `json:"versions"`
	}, len(st.Shards))
	for i, sv := range st.Shards {
		out.Shards[i].Shard = sv.Shard
		for v, n := range sv.Versions {
			out.Shards[i].Versions = append(out.Shards[i].Versions, struct {
				Tenants int   `json:"tenants"`
				Version int64 `json:"version"`
			}{n, v})
		}
		slices.SortFunc(out.Shards[i].Versions, func(a, b struct {
			Tenants int   `json:"tenants"`
			Version int64 `json:"version"`
		}) int {
			return cmp.Compare(a.Version, b.Version)
		})
	}
	for _, f := range st.Failures {
		out.Failures = append(out.Failures, MigrationFailure{TenantId: f.TenantID, Shard: f.Shard, RunId: uuid.MustParse(f.RunID),
			Version: f.Version, Error: f.Error, Sqlstate: f.SQLState, FinishedAt: f.FinishedAt})
	}
	if st.Run != nil {
		run := toMigrationRun(st.Run)
		out.Run = &run
	}
	return c.JSON(http.StatusOK, out)
}

// GetSchemaDrift compares every tenant's schema with its shard's template.
func (s *Server) GetSchemaDrift(c echo.Context) error {
	m, err := s.migrator()
	if err != nil {
		return err
	}
	rep, err := m.Drift(c.Request().Context())
	if err != nil {
		return err
	}
	out := DriftReport{Checked: rep.Checked, Drifted: make([]SchemaDrift, 0, len(rep.Drifted))}
	out.Templates = make([]struct {
		Error       *string `json:"error,omitempty"`
		Fingerprint string  `json:"fingerprint"`
		Shard       string  `json:"shard"`
		Version     int64   `json:"version"`
	}, 0, len(rep.Templates))
	for _, t := range rep.Templates {
		e := struct {
			Error       *string `json:"error,omitempty"`
			Fingerprint string  `json:"fingerprint"`
			Shard       string  `json:"shard"`
			Version     int64   `json:"version"`
		}{Fingerprint: t.Fingerprint, Shard: t.Shard, Version: t.Version}
		if t.Error != "" {
			e.Error = &t.Error
		}
		out.Templates = append(out.Templates, e)
	}
	for _, d := range rep.Drifted {
		sd := SchemaDrift{TenantId: d.TenantID, Shard: d.Shard, Version: d.Version, TemplateVersion: d.TemplateVersion,
			Missing: nonNil(d.Missing), Extra: nonNil(d.Extra)}
		if d.Error != "" {
			sd.Error = &d.Error
		}
		out.Drifted = append(out.Drifted, sd)
	}
	return c.JSON(http.StatusOK, out)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
