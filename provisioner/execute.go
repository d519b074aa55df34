package provisioner

import (
	"context"
	"time"

	"github.com/silo-db/silo"
)

// run launches an operation recorded by the caller and waits up to wait
// for it, returning it with its tenant. A failed operation is returned
// with its error.
func (p *Provisioner) run(ctx context.Context, opID string, wait time.Duration) (Result, error) {
	return p.await(ctx, opID, p.eng.Launch(ctx, opID), wait)
}

// await waits up to wait for an operation this server launched (done) or
// that runs elsewhere (done nil); see engine.Engine.Await.
func (p *Provisioner) await(ctx context.Context, opID string, done <-chan struct{}, wait time.Duration) (Result, error) {
	op, err := p.eng.Await(ctx, opID, done, wait)
	if op == nil {
		return Result{}, err
	}
	res := Result{Operation: op}
	if t, terr := p.store.GetTenant(context.WithoutCancel(ctx), op.TenantID); terr == nil {
		res.Tenant = t
	}
	return res, err
}

// created records a finished create's provisioning time, by where its
// database came from.
func (p *Provisioner) created(_ context.Context, op *silo.Operation, params map[string]any, cause error) {
	outcome := "succeeded"
	if cause != nil {
		outcome = "failed"
	}
	source := "template"
	if cloned, _ := params["cloned"].(bool); !cloned && params["warmDatabase"] != nil {
		source = "warm_pool"
	}
	p.metrics.provision.WithLabelValues(source, outcome).Observe(time.Since(op.CreatedAt).Seconds())
}
