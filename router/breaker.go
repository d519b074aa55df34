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
		wait := max(time.Second, b.openUntil.Sub(now).Round(time.Second))
		return &silo.Error{Code: silo.EUNAVAILABLE, RetryAfter: wait,
			Message: "shard " + shard + " is unavailable; its tenants' requests are refused until it answers again"}
	}
	b.probing = true // half open: this request tries the shard
	return nil
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

// probe checks a shard every interval with SELECT 1 on a connection of its
// own, bounded by timeout: it notices a hung server, which accepts TCP but
// never answers, long before requests' own deadlines would. When the shard
// fails, its idle connections are closed (they are likely dead); when it
// answers, the breaker closes.
func (r *Router) probe(s *shardPool) {
	defer r.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-r.stop
		cancel()
	}()
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
		pctx, pcancel := context.WithTimeout(ctx, r.cfg.ProbeInterval)
		err := func() error {
			if conn == nil {
				cfg, err := r.cfg.Dialer.AdminConfig(pctx, s.name, "")
				if err != nil {
					return err
				}
				cfg.RuntimeParams["application_name"] = "silo-router-probe"
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
			s.closeIdle()
		}
	}
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
