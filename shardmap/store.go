package shardmap

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/silo-db/silo"
)

// Config configures a Store.
type Config struct {
	// Pool is the catalog database, already migrated.
	Pool *pgxpool.Pool
	// ProbeTimeout bounds the connection test of a shard being added.
	// Default 5s.
	ProbeTimeout time.Duration
	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger
	// Sealer seals shard DSNs before they are stored and opens them when
	// they are read. Without it, shards can be neither registered nor read
	// (EINTERNAL); the rest of the Store works.
	Sealer *Sealer
	// Registry gets the silo_tenants gauge (tenants by shard and state),
	// read from the catalog when it is scraped; nil registers none.
	Registry prometheus.Registerer
	// TenantGaugeMaxAge is how old the gauge's counts may be before a scrape
	// reads the catalog again. Default DefaultTenantGaugeMaxAge.
	TenantGaugeMaxAge time.Duration
}

func (c Config) withDefaults() Config {
	if c.ProbeTimeout <= 0 {
		c.ProbeTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.TenantGaugeMaxAge <= 0 {
		c.TenantGaugeMaxAge = DefaultTenantGaugeMaxAge
	}
	return c
}

// Store is the catalog's Go API. It is safe for concurrent use.
type Store struct {
	pool         *pgxpool.Pool
	probeTimeout time.Duration
	log          *slog.Logger
	sealer       *Sealer
}

// New returns a Store over cfg.Pool.
func New(cfg Config) (*Store, error) {
	if cfg.Pool == nil {
		return nil, errors.New("shardmap: Config.Pool is required")
	}
	cfg = cfg.withDefaults()
	s := &Store{pool: cfg.Pool, probeTimeout: cfg.ProbeTimeout, log: cfg.Logger, sealer: cfg.Sealer}
	if cfg.Registry != nil {
		if err := cfg.Registry.Register(&tenantCollector{store: s, maxAge: cfg.TenantGaugeMaxAge}); err != nil {
			return nil, fmt.Errorf("shardmap: register metrics: %w", err)
		}
	}
	return s, nil
}

// Ping checks that the catalog answers a query. It returns EUNAVAILABLE
// when it does not; ctx bounds the check.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.pool.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return CatalogError(err, "catalog is not reachable")
	}
	return nil
}

// OpenCatalog opens a pool to the catalog database and checks that it
// answers. Every statement on the pool runs with statementTimeout, and
// connecting is bounded by connectTimeout. ctx bounds the first check.
func OpenCatalog(ctx context.Context, dsn string, maxConns int32, connectTimeout, statementTimeout time.Duration) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, silo.WrapError(err, silo.EINVALID, "catalog connection string is invalid")
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	cfg.ConnConfig.ConnectTimeout = connectTimeout
	cfg.ConnConfig.RuntimeParams["application_name"] = "silo"
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = fmt.Sprint(statementTimeout.Milliseconds())
	// The catalog finds a server gone without a word (a host crash, a cut
	// network) in about 25 s rather than the kernel's two hours: its
	// sessions end, and their leases (advisory locks) with them, so other
	// servers resume its operations.
	for k, v := range map[string]string{"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"} {
		if _, set := cfg.ConnConfig.RuntimeParams[k]; !set {
			cfg.ConnConfig.RuntimeParams[k] = v
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, silo.WrapError(err, silo.EINVALID, "catalog connection string is invalid")
	}
	pingCtx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, silo.WrapError(err, silo.EUNAVAILABLE, "cannot connect to the catalog at %s", silo.RedactDSN(dsn))
	}
	return pool, nil
}

// Mutate runs fn in a transaction and writes the audit entry for it: in the
// same transaction when fn succeeds, on its own when it fails, so every
// attempt is recorded and a success is never recorded without its change.
// The actor comes from ctx (silo.WithActor). Every change to the catalog
// made on a user's behalf goes through Mutate.
func (s *Store) Mutate(ctx context.Context, action, target string, params map[string]any, fn func(tx pgx.Tx) error) error {
	actor := silo.ActorFrom(ctx)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return insertAudit(ctx, tx, actor, action, target, params, nil)
	})
	if err != nil {
		// The change did not happen; record the attempt even if ctx is done.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if aerr := insertAudit(actx, s.pool, actor, action, target, params, err); aerr != nil {
			s.log.Error("audit entry not written", "action", action, "target", target, "err", aerr)
		}
		return err
	}
	return nil
}

const maxAuditTarget = 200

type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// querier is a pool or a transaction.
type querier interface {
	execer
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func insertAudit(ctx context.Context, db execer, actor silo.Actor, action, target string, params map[string]any, cause error) error {
	if params == nil {
		params = map[string]any{}
	}
	raw, err := json.Marshal(params)
	if err != nil {
		return fmt.Errorf("encode audit params: %w", err)
	}
	// A refused request may name a target of any length; the log keeps
	// enough to recognise it.
	if len(target) > maxAuditTarget {
		target = strings.ToValidUTF8(target[:maxAuditTarget], "") + "…"
	}
	result, msg := silo.AuditResultOK, ""
	if cause != nil {
		result, msg = silo.ErrorCode(cause), silo.ErrorMessage(cause)
	}
	_, err = db.Exec(ctx, `
		INSERT INTO audit_log (actor, action, target, params, result, error, request_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		actor.Name, action, target, raw, result, msg, actor.RequestID)
	if err != nil {
		return CatalogError(err, "write audit entry")
	}
	return nil
}

// CatalogError turns a catalog failure into a *silo.Error, for every
// package that reads the catalog: no row is ENOTFOUND, constraint
// violations are the caller's fault, lost connections and deadlines are not.
// An error that already is a *silo.Error is returned unchanged.
func CatalogError(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	if _, ok := errors.AsType[*silo.Error](err); ok {
		return err
	}
	msg := fmt.Sprintf(format, args...)
	if errors.Is(err, pgx.ErrNoRows) {
		return silo.WrapError(err, silo.ENOTFOUND, "%s", msg)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return silo.WrapError(err, silo.ETIMEOUT, "%s: the catalog did not answer in time", msg)
	}
	if errors.Is(err, context.Canceled) {
		return silo.WrapError(err, silo.EUNAVAILABLE, "%s: cancelled", msg)
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		switch pgErr.Code {
		case "23505": // unique_violation
			return silo.WrapError(err, silo.ECONFLICT, "%s: already exists", msg)
		case "23503", "23514", "22001", "22P02": // foreign key, check, too long, bad text
			return silo.WrapError(err, silo.EINVALID, "%s: %s", msg, pgErr.Message)
		case "57014": // query_canceled (statement_timeout)
			return silo.WrapError(err, silo.ETIMEOUT, "%s: the catalog did not answer in time", msg)
		}
		if len(pgErr.Code) == 5 && (pgErr.Code[:2] == "08" || pgErr.Code[:2] == "57" || pgErr.Code[:2] == "53") {
			return catalogUnavailable(err, msg)
		}
		return silo.WrapError(err, silo.EINTERNAL, "%s", msg)
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return catalogUnavailable(err, msg)
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return catalogUnavailable(err, msg)
	}
	return silo.WrapError(err, silo.EINTERNAL, "%s", msg)
}

// catalogUnavailable is the error of a call the catalog did not take: it
// is down, restarting or out of connections, so a retry a moment later may
// succeed.
func catalogUnavailable(err error, msg string) error {
	return &silo.Error{Code: silo.EUNAVAILABLE, Message: msg + ": the catalog is unavailable", Err: err, RetryAfter: time.Second}
}

// page validates p and returns its limit and decoded cursor.
func page(p silo.Page) (limit int, after string, err error) {
	limit = p.Limit
	switch {
	case limit == 0:
		limit = silo.DefaultPageLimit
	case limit < 0 || limit > silo.MaxPageLimit:
		return 0, "", silo.Errorf(silo.EINVALID, "limit %d must be between 1 and %d", p.Limit, silo.MaxPageLimit)
	}
	if p.Cursor == "" {
		return limit, "", nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(p.Cursor)
	if err != nil || len(raw) == 0 {
		return 0, "", silo.Errorf(silo.EINVALID, "cursor %q is not one this server returned", p.Cursor)
	}
	return limit, string(raw), nil
}

func encodeCursor(key string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(key))
}

// collectPage trims a result read with limit+1 rows to limit and sets the
// next cursor from the last item kept.
func collectPage[T any](items []T, limit int, key func(T) string) silo.List[T] {
	if len(items) <= limit {
		return silo.List[T]{Items: items}
	}
	items = items[:limit]
	return silo.List[T]{Items: items, NextCursor: encodeCursor(key(items[limit-1]))}
}
