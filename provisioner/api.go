package provisioner

import (
	"context"
	"io"
	"time"

	"github.com/silo-db/silo"
)

// CreateRequest asks for a new tenant.
type CreateRequest struct {
	ID string
	// Shard, if set, must be active; otherwise placement picks the least
	// loaded active shard (tenants per unit of weight).
	Shard string
	// Region, if set, restricts placement to shards of that region, and the
	// tenant never leaves it. Otherwise the tenant takes its shard's region.
	Region string
	// IdempotencyKey, if set, makes a retried request return the first
	// request's operation instead of starting another.
	IdempotencyKey string
	// Limits, if set, are the tenant's resource bounds; otherwise
	// Config.TenantLimits.
	Limits *silo.TenantLimits
}

// Result is what a lifecycle call returns: its operation, finished or not,
// and the tenant as it stood when the call returned.
type Result struct {
	Tenant    *silo.Tenant
	Operation *silo.Operation
}

// Create registers a tenant and makes its database and role, waiting up to
// wait for the operation to finish; it goes on in the background after that,
// and Result.Operation tells whether it is done. It returns EINVALID for a
// bad id, an unknown or inactive shard or an unknown region, ECONFLICT for a
// taken id (or an idempotency key reused for another request), and
// EUNAVAILABLE when no active shard can take the tenant. A failure of the
// operation itself is reported in Result.Operation (State failed) and as the
// error. ctx bounds the wait, not the operation.
func (p *Provisioner) Create(ctx context.Context, req CreateRequest, wait time.Duration) (Result, error) {
	return p.create(ctx, req, wait)
}

// Suspend makes the tenant's role unable to log in and ends its sessions.
// It returns ENOTFOUND for an unknown or deleted tenant and ECONFLICT for a
// tenant that is not active or suspended. Suspending a suspended tenant
// succeeds and changes nothing.
func (p *Provisioner) Suspend(ctx context.Context, id string, wait time.Duration) (Result, error) {
	return p.lifecycle(ctx, id, silo.OpSuspend, wait)
}

// Resume lets a suspended tenant's role log in again. Errors as Suspend.
func (p *Provisioner) Resume(ctx context.Context, id string, wait time.Duration) (Result, error) {
	return p.lifecycle(ctx, id, silo.OpResume, wait)
}

// Delete soft-deletes a tenant: its data becomes unreachable and is purged
// after the grace period. With purge, the database and role are dropped at
// once and the catalog keeps a tombstone. Deleting a deleted tenant again
// with purge purges it; ENOTFOUND for unknown or purged tenants.
func (p *Provisioner) Delete(ctx context.Context, id string, purge bool, wait time.Duration) (Result, error) {
	if purge {
		return p.lifecycle(ctx, id, silo.OpPurge, wait)
	}
	return p.lifecycle(ctx, id, silo.OpDelete, wait)
}

// Export writes a pg_dump custom-format archive of the tenant's database to
// w. It returns ENOTFOUND for unknown or purged tenants, and EUNAVAILABLE
// when the shard cannot be reached; once bytes are written, a failure can
// only end the stream early (the error says so).
func (p *Provisioner) Export(ctx context.Context, id string, w io.Writer) error {
	return p.export(ctx, id, w)
}

// Operation returns an operation by id, with its kind's outcome (a
// move's path and pause), or ENOTFOUND.
func (p *Provisioner) Operation(ctx context.Context, id string) (*silo.Operation, error) {
	return p.eng.Get(ctx, id)
}

// CancelOperation asks a running operation to stop: it is undone at its
// next step boundary. It returns ECONFLICT for one past its pivot, ENOTFOUND
// for an unknown one, and a finished one as it is. Audited as
// operation.cancel.
func (p *Provisioner) CancelOperation(ctx context.Context, id string) (*silo.Operation, error) {
	return p.eng.Cancel(ctx, id)
}

// SetLimits changes a tenant's resource bounds: on its role on the shard
// (PostgreSQL enforces them; a session already open keeps the
// temp_file_limit it started with) and in the catalog, audited as
// tenant.limits. It returns EINVALID for limits out of range, ENOTFOUND for
// an unknown or purged tenant, ECONFLICT for one being created or moved,
// and EUNAVAILABLE when the shard cannot be reached (nothing changed then).
func (p *Provisioner) SetLimits(ctx context.Context, id string, limits silo.TenantLimits) (*silo.Tenant, error) {
	return p.setLimits(ctx, id, limits)
}
