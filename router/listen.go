package router

import (
	"context"
	"time"
)

// listen follows tenant changes on the catalog's silo_tenant channel (a
// trigger on the tenants table notifies every change) and drops the routes
// and pools of the tenants named. After a lost connection it drops every
// route, since changes may have been missed. ready gets the first
// connection's outcome.
func (r *Router) listen(ready chan<- error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-r.stop
		cancel()
	}()
	backoff := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		conn, err := r.cfg.Catalog.Acquire(ctx)
		if err == nil {
			_, err = conn.Exec(ctx, "LISTEN silo_tenant")
			if err != nil {
				conn.Release()
			}
		}
		if err == nil {
			// Whatever changed while nobody listened; before Start returns,
			// so that it never drops a route read after Start.
			r.invalidate("")
		}
		if first {
			ready <- err
			first = false
		}
		if err != nil {
			r.log.Warn("router: cannot listen for tenant changes; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		for {
			n, err := conn.Conn().WaitForNotification(ctx)
			if err != nil {
				break
			}
			r.invalidate(n.Payload)
		}
		// The connection is in LISTEN state or broken: never reuse it.
		_ = conn.Conn().Close(context.Background())
		conn.Release()
	}
}
