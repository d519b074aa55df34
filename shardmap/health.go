package shardmap

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/silo-db/silo"
)

// Defaults of CatalogHealthConfig: a catalog that stops answering is known
// to be down within Interval + 2 × Timeout, 5 s.
const (
	DefaultCatalogProbeInterval = time.Second
	DefaultCatalogProbeTimeout  = 2 * time.Second
)

// catalogDownAfter is how many probes in a row must fail before the
// catalog counts as down: one slow answer on a busy machine is not an
// outage.
const catalogDownAfter = 2

// CatalogHealthConfig configures a CatalogHealth.
type CatalogHealthConfig struct {
	// Pool is the catalog. The probe opens a connection of its own with
	// the pool's settings, so a pool whose connections are all in use is
	// not taken for a catalog that is down.
	Pool *pgxpool.Pool
	// Interval is how often the catalog is probed (SELECT 1). Default
	// DefaultCatalogProbeInterval.
	Interval time.Duration
	// Timeout bounds each probe. Default DefaultCatalogProbeTimeout.
	Timeout time.Duration
	// Logger gets a line when the catalog goes down and when it is back.
	// Default slog.Default().
	Logger *slog.Logger
}

// CatalogHealth follows whether the catalog answers, so that callers fail
// fast with EUNAVAILABLE while it does not, instead of each waiting out a
// timeout on a catalog that is stopped or hung. It probes the catalog
// every Interval; two probes in a row that fail or time out mark it down,
// and one that succeeds marks it up again. Guard gives a call a context
// that ends when the catalog goes down. Create it with NewCatalogHealth,
// then Start and Stop it; it is safe for concurrent use.
type CatalogHealth struct {
	cfg CatalogHealthConfig

	up atomic.Bool

	mu       sync.Mutex
	failures int
	since    time.Time               // of the first failed probe of the outage
	upCtx    context.Context         // ends, with the outage's error as its cause, when the catalog goes down
	upCancel context.CancelCauseFunc //

	stop    chan struct{}
	started bool
	wg      sync.WaitGroup
}

// NewCatalogHealth returns a CatalogHealth that counts the catalog up
// until its probes say otherwise. It returns an error for a nil Pool.
func NewCatalogHealth(cfg CatalogHealthConfig) (*CatalogHealth, error) {
	if cfg.Pool == nil {
		return nil, errors.New("shardmap: CatalogHealthConfig.Pool is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultCatalogProbeInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultCatalogProbeTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h := &CatalogHealth{cfg: cfg, stop: make(chan struct{})}
	h.up.Store(true)
	h.upCtx, h.upCancel = context.WithCancelCause(context.Background())
	return h, nil
}

// Start starts probing the catalog in the background. It returns nil; ctx
// is unused, and Stop ends the probes.
func (h *CatalogHealth) Start(context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.started {
		return nil
	}
	h.started = true
	h.wg.Add(1)
	go h.run()
	return nil
}

// Stop ends the probes and waits for them. It may be called more than once.
func (h *CatalogHealth) Stop() {
	h.mu.Lock()
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// Up reports whether the catalog answered its latest probes.
func (h *CatalogHealth) Up() bool { return h.up.Load() }

// Err returns nil while the catalog answers, and EUNAVAILABLE with a retry
// hint while it is down.
func (h *CatalogHealth) Err() error {
	if h.up.Load() {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.downError()
}

// downError is the error of calls refused during the outage; h.mu is held.
func (h *CatalogHealth) downError() error {
	return &silo.Error{Code: silo.EUNAVAILABLE, RetryAfter: max(time.Second, h.cfg.Interval),
		Message: "the catalog is not answering (since " + h.since.UTC().Format(time.RFC3339) + "); " +
			"only tenants whose routes this server holds are served until it is back"}
}

// Guard returns EUNAVAILABLE at once while the catalog is down. Otherwise
// it returns a context derived from ctx that also ends when the catalog
// goes down, with the EUNAVAILABLE error as its cause (context.Cause), so
// that a call to a catalog that hangs ends within the time it takes to
// notice. The caller must call the CancelFunc.
func (h *CatalogHealth) Guard(ctx context.Context) (context.Context, context.CancelFunc, error) {
	h.mu.Lock()
	if !h.up.Load() {
		defer h.mu.Unlock()
		return nil, nil, h.downError()
	}
	up := h.upCtx
	h.mu.Unlock()
	gctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(up, func() { cancel(context.Cause(up)) })
	return gctx, func() { stop(); cancel(context.Canceled) }, nil
}

// GuardCause returns the catalog's error when gctx, from Guard, ended
// because the catalog went down, and nil otherwise.
func GuardCause(gctx context.Context) error {
	if gctx.Err() == nil {
		return nil
	}
	if se, ok := errors.AsType[*silo.Error](context.Cause(gctx)); ok {
		return se
	}
	return nil
}

func (h *CatalogHealth) run() {
	defer h.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-h.stop
		cancel()
	}()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(h.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, pcancel := context.WithTimeout(ctx, h.cfg.Timeout)
		err := func() error {
			if conn == nil {
				cfg := h.cfg.Pool.Config().ConnConfig.Copy()
				cfg.RuntimeParams["application_name"] = "silo-catalog-probe"
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
		if err != nil && conn != nil {
			go conn.Close(context.Background()) // a hung catalog must not hold up the probe
			conn = nil
		}
		h.record(err)
	}
}

// record takes a probe's outcome.
func (h *CatalogHealth) record(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		h.failures = 0
		if !h.up.Load() {
			h.cfg.Logger.Info("the catalog answers again", "down_for", time.Since(h.since).Round(time.Millisecond))
			h.upCtx, h.upCancel = context.WithCancelCause(context.Background())
			h.up.Store(true)
		}
		return
	}
	h.failures++
	if h.failures == 1 {
		h.since = time.Now()
	}
	if h.failures < catalogDownAfter || !h.up.Load() {
		return
	}
	h.up.Store(false)
	h.cfg.Logger.Warn("the catalog is not answering; calls that need it are refused until it is back", "err", err)
	h.upCancel(h.downError())
}
