package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/rebalancer"
	"github.com/silo-db/silo/shardmap"
)

// Provisioner is what the API needs of the tenant lifecycle engine.
type Provisioner interface {
	Create(ctx context.Context, req provisioner.CreateRequest, wait time.Duration) (provisioner.Result, error)
	Suspend(ctx context.Context, id string, wait time.Duration) (provisioner.Result, error)
	Resume(ctx context.Context, id string, wait time.Duration) (provisioner.Result, error)
	Delete(ctx context.Context, id string, purge bool, wait time.Duration) (provisioner.Result, error)
	Export(ctx context.Context, id string, w io.Writer) error
	Import(ctx context.Context, id string, archive io.Reader) (*silo.Tenant, error)
	SetLimits(ctx context.Context, id string, limits silo.TenantLimits) (*silo.Tenant, error)
	Operation(ctx context.Context, id string) (*silo.Operation, error)
	CancelOperation(ctx context.Context, id string) (*silo.Operation, error)
}

// Limits of the wait query parameter.
const (
	DefaultWait = 10 * time.Second
	MaxWait     = 60 * time.Second
	// waitMargin is kept from the request's deadline to read the tenant and
	// answer once the wait is over.
	waitMargin = time.Second
)

// waitOf parses the wait parameter: EMALFORMED when it is no duration,
// EINVALID when it is out of range. The wait is cut to what the request's
// deadline leaves, so the answer is a 202, not a timeout.
func waitOf(ctx context.Context, param *string) (time.Duration, error) {
	wait := DefaultWait
	if param != nil {
		var err error
		if wait, err = time.ParseDuration(*param); err != nil {
			return 0, silo.Errorf(silo.EMALFORMED, "wait %q is not a duration such as 10s or 500ms", *param)
		}
		if wait < 0 || wait > MaxWait {
			return 0, silo.Errorf(silo.EINVALID, "wait %s must be between 0s and %s", *param, MaxWait)
		}
	}
	if deadline, ok := ctx.Deadline(); ok {
		wait = max(0, min(wait, time.Until(deadline)-waitMargin))
	}
	return wait, nil
}

func toTenant(t *silo.Tenant) Tenant {
	return Tenant{
		Id:            t.ID,
		Shard:         t.Shard,
		Database:      t.Database,
		State:         TenantState(t.State),
		Region:        t.Region,
		SchemaVersion: t.SchemaVersion,
		Epoch:         t.Epoch,
		CreatedAt:     t.CreatedAt,
		UpdatedAt:     t.UpdatedAt,
		DeletedAt:     t.DeletedAt,
		PurgeAfter:    t.PurgeAfter,
		Limits:        TenantLimits{Connections: t.Limits.Connections, TempFileMB: t.Limits.TempFileMB},
	}
}

func toOperation(op *silo.Operation) Operation {
	out := Operation{
		Id:         op.ID,
		Kind:       OperationKind(op.Kind),
		TenantId:   op.TenantID,
		State:      OperationState(op.State),
		Steps:      make([]OperationStep, 0, len(op.Steps)),
		CreatedAt:  op.CreatedAt,
		UpdatedAt:  op.UpdatedAt,
		FinishedAt: op.FinishedAt,
	}
	if op.Error != "" {
		out.Error = &op.Error
	}
	if op.ErrorCode != "" {
		out.ErrorCode = &op.ErrorCode
	}
	if m := op.Move; m != nil {
		out.Move = &MoveOutcome{}
		if m.Path != "" {
			path, reason := MoveOutcomePath(m.Path), m.PathReason
			out.Move.Path, out.Move.PathReason = &path, &reason
		}
		if m.PauseMs > 0 {
			pause := m.PauseMs
			out.Move.PauseMs = &pause
		}
		if m.CopiedBytes > 0 {
			copied := m.CopiedBytes
			out.Move.CopiedBytes = &copied
		}
	}
	for _, st := range op.Steps {
		step := OperationStep{
			Name: st.Name, State: OperationState(st.State), Attempts: st.Attempts,
			StartedAt: st.StartedAt, FinishedAt: st.FinishedAt,
		}
		if st.Error != "" {
			step.Error = &st.Error
		}
		out.Steps = append(out.Steps, step)
	}
	return out
}

// answer writes the outcome of a lifecycle call: the tenant with status done
// when its operation finished, the operation with 202 while it runs, and a
// problem naming the operation when it failed.
func (s *Server) answer(c echo.Context, res provisioner.Result, err error, done int) error {
	op := res.Operation
	if op != nil && op.State == silo.OpFailed {
		c.Set(ctxOperationID, op.ID)
		code, msg := op.ErrorCode, op.Error
		if code == "" {
			code = silo.ErrorCode(err)
		}
		if code == "" {
			code = silo.EINTERNAL
		}
		if msg == "" {
			msg = silo.ErrorMessage(err)
		}
		if msg == "" {
			msg = "the operation failed"
		}
		return silo.WrapError(err, code, "%s", msg)
	}
	if err != nil {
		return err
	}
	if op != nil && op.State == silo.OpRunning {
		c.Response().Header().Set(echo.HeaderLocation, "/v1/operations/"+url.PathEscape(op.ID))
		return c.JSON(http.StatusAccepted, toOperation(op))
	}
	t := res.Tenant
	if t == nil {
		if op == nil {
			return fmt.Errorf("the provisioner returned neither a tenant nor an operation")
		}
		if t, err = s.catalog.GetTenant(c.Request().Context(), op.TenantID); err != nil {
			return err
		}
	}
	if done == http.StatusCreated {
		c.Response().Header().Set(echo.HeaderLocation, "/v1/tenants/"+url.PathEscape(t.ID))
	}
	return c.JSON(done, toTenant(t))
}

// CreateTenant creates a tenant and its database, waiting for it up to the
// wait parameter.
func (s *Server) CreateTenant(c echo.Context, params CreateTenantParams) error {
	var body TenantCreate
	if err := decodeJSON(c, &body); err != nil {
		return err
	}
	ctx := c.Request().Context()
	wait, err := waitOf(ctx, params.Wait)
	if err != nil {
		return err
	}
	req := provisioner.CreateRequest{ID: body.Id}
	if body.Shard != nil {
		if req.Shard = *body.Shard; req.Shard == "" {
			return silo.Errorf(silo.EINVALID, "shard must not be empty: omit it to let Silo place the tenant")
		}
	}
	if body.Region != nil {
		if req.Region = *body.Region; req.Region == "" {
			return silo.Errorf(silo.EINVALID, "region must not be empty: omit it to place the tenant in any region")
		}
	}
	if body.Limits != nil {
		req.Limits = &silo.TenantLimits{Connections: body.Limits.Connections, TempFileMB: body.Limits.TempFileMB}
	}
	if params.IdempotencyKey != nil {
		req.IdempotencyKey = *params.IdempotencyKey
		if n := utf8.RuneCountInString(req.IdempotencyKey); n < 1 || n > provisioner.MaxIdempotencyKeyLen {
			return silo.Errorf(silo.EINVALID, "Idempotency-Key must be 1 to %d characters, not %d", provisioner.MaxIdempotencyKeyLen, n)
		}
	}
	res, err := s.provisioner.Create(ctx, req, wait)
	return s.answer(c, res, err, http.StatusCreated)
}

// UpdateTenant changes a tenant's limits.
func (s *Server) UpdateTenant(c echo.Context, id TenantID) error {
	var body TenantUpdate
	if err := decodeJSON(c, &body); err != nil {
		return err
	}
	t, err := s.provisioner.SetLimits(c.Request().Context(), id, silo.TenantLimits{
		Connections: body.Limits.Connections, TempFileMB: body.Limits.TempFileMB})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toTenant(t))
}

// ListTenants answers one page of tenants, filtered.
func (s *Server) ListTenants(c echo.Context, params ListTenantsParams) error {
	var f shardmap.TenantFilter
	if params.Shard != nil {
		f.Shard = *params.Shard
	}
	if params.Region != nil {
		f.Region = *params.Region
	}
	if params.Prefix != nil {
		f.Prefix = *params.Prefix
	}
	if params.State != nil {
		f.State = silo.TenantState(*params.State)
		if !f.State.Valid() {
			return silo.Errorf(silo.EINVALID, "state %q must be provisioning, active, suspended, deleted or purged", f.State)
		}
	}
	list, err := s.catalog.ListTenants(c.Request().Context(), f, pageOf(params.Limit, params.Cursor))
	if err != nil {
		return err
	}
	out := TenantList{Items: make([]Tenant, 0, len(list.Items)), NextCursor: nextCursor(list.NextCursor)}
	for i := range list.Items {
		out.Items = append(out.Items, toTenant(&list.Items[i]))
	}
	return c.JSON(http.StatusOK, out)
}

// GetTenant answers one tenant, deleted and purged ones included, and with
// size=true the size of its database.
func (s *Server) GetTenant(c echo.Context, id TenantID, params GetTenantParams) error {
	ctx := c.Request().Context()
	t, err := s.catalog.GetTenant(ctx, id)
	if err != nil {
		return err
	}
	out := toTenant(t)
	if params.Size != nil && *params.Size && t.State != silo.TenantPurged {
		if s.rebalancer == nil {
			return silo.Errorf(silo.EUNAVAILABLE, "this server does not read database sizes")
		}
		size, err := s.rebalancer.Size(ctx, t)
		if err != nil {
			return err
		}
		out.SizeBytes = &size
	}
	return c.JSON(http.StatusOK, out)
}

// DeleteTenant soft-deletes a tenant, or purges it with purge=true.
func (s *Server) DeleteTenant(c echo.Context, id TenantID, params DeleteTenantParams) error {
	ctx := c.Request().Context()
	wait, err := waitOf(ctx, params.Wait)
	if err != nil {
		return err
	}
	purge := params.Purge != nil && *params.Purge
	res, err := s.provisioner.Delete(ctx, id, purge, wait)
	return s.answer(c, res, err, http.StatusOK)
}

// SuspendTenant stops a tenant's role from logging in.
func (s *Server) SuspendTenant(c echo.Context, id TenantID, params SuspendTenantParams) error {
	ctx := c.Request().Context()
	wait, err := waitOf(ctx, params.Wait)
	if err != nil {
		return err
	}
	res, err := s.provisioner.Suspend(ctx, id, wait)
	return s.answer(c, res, err, http.StatusOK)
}

// MoveTenant moves a live tenant to another shard.
func (s *Server) MoveTenant(c echo.Context, id TenantID, params MoveTenantParams) error {
	ctx := c.Request().Context()
	wait, err := waitOf(ctx, params.Wait)
	if err != nil {
		return err
	}
	var req TenantMove
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if s.rebalancer == nil {
		return silo.Errorf(silo.EUNAVAILABLE, "this server does not move tenants")
	}
	res, err := s.rebalancer.Move(ctx, rebalancer.MoveRequest{ID: id, Shard: req.Shard}, wait)
	return s.answer(c, res, err, http.StatusOK)
}

// ResumeTenant lets a suspended tenant's role log in again.
func (s *Server) ResumeTenant(c echo.Context, id TenantID, params ResumeTenantParams) error {
	ctx := c.Request().Context()
	wait, err := waitOf(ctx, params.Wait)
	if err != nil {
		return err
	}
	res, err := s.provisioner.Resume(ctx, id, wait)
	return s.answer(c, res, err, http.StatusOK)
}

// GetOperation answers one operation.
func (s *Server) GetOperation(c echo.Context, id OperationID) error {
	op, err := s.provisioner.Operation(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toOperation(op))
}

// ListOperations answers one page of operations, newest first, filtered.
// The store refuses bad filters, limits and cursors with EMALFORMED.
func (s *Server) ListOperations(c echo.Context, params ListOperationsParams) error {
	var f shardmap.OperationFilter
	if params.Tenant != nil {
		if f.TenantID = *params.Tenant; f.TenantID == "" {
			return silo.Errorf(silo.EMALFORMED, "tenant must not be empty: omit it for every tenant's operations")
		}
	}
	if params.State != nil {
		if f.State = silo.OperationState(*params.State); f.State == "" {
			return silo.Errorf(silo.EMALFORMED, "state must not be empty: omit it for operations in any state")
		}
	}
	if params.Kind != nil {
		if f.Kind = silo.OperationKind(*params.Kind); f.Kind == "" {
			return silo.Errorf(silo.EMALFORMED, "kind must not be empty: omit it for operations of every kind")
		}
	}
	if params.Limit != nil && *params.Limit == 0 {
		// pageOf would make it -1, which the message would show.
		return silo.Errorf(silo.EMALFORMED, "limit 0 must be between 1 and %d", shardmap.MaxOperationPageLimit)
	}
	list, err := s.catalog.ListOperations(c.Request().Context(), f, pageOf(params.Limit, params.Cursor))
	if err != nil {
		return err
	}
	out := OperationList{Items: make([]Operation, 0, len(list.Items)), NextCursor: nextCursor(list.NextCursor)}
	for i := range list.Items {
		out.Items = append(out.Items, toOperation(&list.Items[i]))
	}
	return c.JSON(http.StatusOK, out)
}

// CancelOperation asks a running operation to stop and be undone.
func (s *Server) CancelOperation(c echo.Context, id OperationID) error {
	op, err := s.provisioner.CancelOperation(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toOperation(op))
}

// ExportTenant streams a pg_dump archive of the tenant's database. It is
// exempt from the request timeout (an export takes as long as the database
// is big); instead each write must reach the client within the idle limit.
func (s *Server) ExportTenant(c echo.Context, id TenantID) error {
	rc := http.NewResponseController(c.Response())
	// The server's read deadline would cancel the request's context
	// mid-download; the client has sent all it will send.
	_ = rc.SetReadDeadline(time.Time{})
	w := &exportWriter{c: c, rc: rc, id: id, idle: s.requestTimeout + 10*time.Second}
	err := s.provisioner.Export(c.Request().Context(), id, w)
	if !c.Response().Committed {
		if err != nil {
			return err // nothing sent yet: a proper problem
		}
		w.commit()
		return nil
	}
	if err != nil {
		// The 200 is out, so no problem can follow. Cut the connection so
		// the client sees a short read, not a complete-looking download.
		code := silo.ErrorCode(err)
		c.Set(ctxErrorCode, code)
		s.log.ErrorContext(c.Request().Context(), "export cut short", "request_id", requestID(c), "tenant", id, "bytes", w.n, "code", code, "err", err)
		conn, _, herr := c.Response().Hijack()
		if herr != nil {
			panic(http.ErrAbortHandler) // HTTP/2: net/http resets the stream
		}
		_ = conn.Close()
	}
	return nil
}

// MaxImportBytes bounds an import's archive.
const MaxImportBytes = 16 << 30

// ImportTenant restores an archive, the request's body, into the tenant's
// database. Like the export it is exempt from the request timeout and the
// body limit (an archive is as big as its database); instead each read of
// the body must come within the idle limit, and the archive is bounded by
// MaxImportBytes.
func (s *Server) ImportTenant(c echo.Context, id TenantID) error {
	req := c.Request()
	if req.ContentLength > MaxImportBytes {
		return silo.Errorf(silo.ETOOLARGE, "the archive is over the limit of %d bytes", int64(MaxImportBytes))
	}
	rc := http.NewResponseController(c.Response())
	body := &idleReader{r: http.MaxBytesReader(c.Response(), req.Body, MaxImportBytes), rc: rc, idle: s.requestTimeout + 10*time.Second}
	t, err := s.provisioner.Import(req.Context(), id, body)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return silo.Errorf(silo.ETOOLARGE, "the archive is over the limit of %d bytes", int64(MaxImportBytes))
		}
		return err
	}
	return c.JSON(http.StatusOK, toTenant(t))
}

// idleReader moves the connection's read deadline on at each read: a
// body that keeps coming is read however long it is.
type idleReader struct {
	r    io.Reader
	rc   *http.ResponseController
	idle time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	_ = r.rc.SetReadDeadline(time.Now().Add(r.idle))
	return r.r.Read(p)
}

// exportWriter commits the 200 and its headers on the first byte, so that
// an export failing before any output still answers a problem.
type exportWriter struct {
	c    echo.Context
	rc   *http.ResponseController
	id   string
	idle time.Duration
	n    int64
}

func (w *exportWriter) commit() {
	h := w.c.Response().Header()
	h.Set(echo.HeaderContentType, echo.MIMEOctetStream)
	// Only an existing tenant's id gets here, and ids are [a-z0-9-].
	h.Set(echo.HeaderContentDisposition, fmt.Sprintf(`attachment; filename="%s.dump"`, w.id))
	h.Set(echo.HeaderXContentTypeOptions, "nosniff")
	w.c.Response().WriteHeader(http.StatusOK)
}

func (w *exportWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !w.c.Response().Committed {
		w.commit()
	}
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.idle))
	n, err := w.c.Response().Write(p)
	w.n += int64(n)
	return n, err
}
