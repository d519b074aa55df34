package router

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
)

// breaker stops sending work to a shard that is down or hung, so its
// tenants fail fast with EUNAVAILABLE instead of each waiting out a
// timeout, and the router's goroutines and budget stay free for the other
// shards. It opens after consecutive failures (connections that fail, or
// the prober's probes) and lets one request through after the cooldown; a
// success closes it.
type breaker struct {
	threshold int
	cooldown  time.Duration

	mu        sync.Mutex
	failures  int
	openUntil time.Time
	probing   bool
}

// allow returns nil when a request may go to the shard.
func (b *breaker) allow(shard string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failures < b.threshold {
		return nil
	}
	now := time.Now()
	if now.Before(b.openUntil) || b.probing {
		return &silo.Error{Code: silo.EUNAVAILABLE, RetryAfter: b.retryAfter(now),
			Message: "shard " + shard + " is unavailable; its tenants' requests are refused until it answers again"}
	}
	b.probing = true // half open: this request tries the shard
	return nil
}

// cutError is the error of the requests in flight on the shard when its
// breaker opened: their connections were closed under them.
func (b *breaker) cutError(shard string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return &silo.Error{Code: silo.EUNAVAILABLE, RetryAfter: b.retryAfter(time.Now()),
		Message: "shard " + shard + " stopped answering, and this request was cut off: a statement or COMMIT it had sent " +
			"may or may not have taken effect, and an open transaction is rolled back; its tenants' requests are refused until it answers again"}
}

// retryAfter is when an open breaker lets a request through; b.mu is held.
func (b *breaker) retryAfter(now time.Time) time.Duration {
	return max(time.Second, b.openUntil.Sub(now).Round(time.Second))
}

// success records a shard that answered.
func (b *breaker) success() {
	b.mu.Lock()
	b.failures, b.probing, b.openUntil = 0, false, time.Time{}
	b.mu.Unlock()
}

// failure records a shard that did not answer; it reports whether the
// breaker is now open.
func (b *breaker) failure() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures++
	b.probing = false
	if b.failures >= b.threshold {
		b.openUntil = time.Now().Add(b.cooldown)
		return true
	}
	return false
}

func (b *breaker) isOpen() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failures >= b.threshold
}

// probe checks a shard every ProbeInterval with SELECT 1 on a connection
// of its own, bounded by ProbeTimeout: it notices a hung server, which
// accepts TCP but never answers, long before requests' own deadlines
// would. When the shard fails, its breaker opens (see trip); when it
// answers, the breaker closes. The shard's admin settings are read from
// the catalog for each new connection; when the catalog does not answer
// the last ones serve, so that a catalog outage is not taken for the
// shard's.
func (r *Router) probe(s *shardPool) {
	defer r.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-r.stop
		cancel()
	}()
	var cfg *pgx.ConnConfig
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(r.cfg.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if conn == nil {
			if cfg = r.probeConfig(ctx, s.name, cfg); cfg == nil {
				continue // the catalog's failure, not the shard's
			}
		}
		pctx, pcancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
		err := func() error {
			if conn == nil {
				var err error
				if conn, err = pgx.ConnectConfig(pctx, cfg); err != nil {
					return err
				}
			}
			_, err := conn.Exec(pctx, "SELECT 1")
			return err
		}()
		pcancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			if s.breaker.isOpen() {
				r.log.Info("router: shard answers again", "shard", s.name)
			}
			s.breaker.success()
			continue
		}
		if conn != nil {
			go conn.Close(context.Background())
			conn = nil
		}
		if s.breaker.failure() {
			r.log.Warn("router: shard unavailable; refusing its tenants' requests", "shard", s.name, "err", err)
			s.trip()
		}
	}
}

// probeConfig returns the settings of the prober's connection to a shard,
// read from the catalog, or last, the settings read before, when the
// catalog does not answer.
func (r *Router) probeConfig(ctx context.Context, shard string, last *pgx.ConnConfig) *pgx.ConnConfig {
	if !r.health.Up() && last != nil {
		return last // without waiting for the catalog to time out
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
	defer cancel()
	cfg, err := r.cfg.Dialer.AdminConfig(ctx, shard, "")
	if err != nil {
		if last == nil {
			r.log.Warn("router: cannot read a shard's settings to probe it", "shard", shard, "err", err)
		}
		return last
	}
	cfg.RuntimeParams["application_name"] = "silo-router-probe"
	return cfg
}

// trip is what an open breaker does to the shard's connections: it closes
// the idle ones (they are likely dead) and cuts the requests in flight,
// which a hung server would otherwise hold until their own deadlines.
func (s *shardPool) trip() {
	s.closeIdle()
	s.cutInFlight(s.breaker.cutError(s.name))
}

// closeIdle closes every idle connection of the shard.
func (s *shardPool) closeIdle() {
	var idle []*idleConn
	s.mu.Lock()
	for e := s.idle.Front(); e != nil; e = e.Next() {
		ic := e.Value.(*idleConn)
		ic.owner.removeIdle(ic)
		idle = append(idle, ic)
	}
	s.idle.Init()
	s.mu.Unlock()
	go s.closeAndFree(idle) // a hung shard must not hold up the prober
}
