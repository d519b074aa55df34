package shardmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/silo-db/silo"
)

// SafeSearchPath is the search_path of every admin session Silo opens. A
// tenant owns its database and may ALTER DATABASE … SET search_path, which
// every later session inherits; a startup parameter overrides it, so an
// admin session never resolves a name to the tenant's functions or
// operators.
const SafeSearchPath = "pg_catalog, pg_temp"

// adminSettings are the startup parameters of every admin session, over
// whatever a tenant set on its database for every session there: the
// admin's own role (a tenant may set role to its own), writable
// transactions, and no timeouts but Silo's own deadlines.
var adminSettings = map[string]string{
	"search_path":                         SafeSearchPath,
	"role":                                "none",
	"default_transaction_read_only":       "off",
	"statement_timeout":                   "0",
	"lock_timeout":                        "0",
	"idle_in_transaction_session_timeout": "0",
}

// Bounds of login repairs. A tenant that keeps changing its password
// cannot make Silo rewrite its role in a loop, nor make Silo pay for
// logins it refuses: a verifier the tenant wrote may ask the client for
// ten million SCRAM iterations, seconds of CPU per attempt. After
// maxRepairs repairs within repairWindow, the tenant's logins are refused
// outright for blockFor.
var (
	repairEvery  = 5 * time.Second // variables for the tests
	maxRepairs   = 3
	repairWindow = time.Minute
	blockFor     = 5 * time.Minute
)

// DialerConfig configures a Dialer.
type DialerConfig struct {
	// Store reads shard DSNs and tenant secrets, and audits repairs.
	Store *Store
	// Sealer opens tenant passwords.
	Sealer *Sealer
	// ConnectTimeout bounds each connection. Default 5s.
	ConnectTimeout time.Duration
	// ApplicationName is shown in pg_stat_activity. Default "silo".
	ApplicationName string
	// Logger gets structured logs. Default slog.Default().
	Logger *slog.Logger
}

// Dialer builds every connection Silo makes to a shard, in one of two
// roles, and nothing else does:
//
//   - as the shard's admin (AdminConfig, ConnectAdmin), for what only the
//     admin may do: roles, databases, publications, subscriptions, reads of
//     pg_catalog. An admin session never touches what a tenant controls
//     (its tables, functions, triggers, views), since any of them could run
//     the tenant's code with the admin's rights, and SET ROLE is no
//     boundary: RESET ROLE undoes it.
//   - as a tenant's own login role (TenantConfig, ConnectTenant), for
//     everything on the tenant's objects: migrations, version reads,
//     fingerprints, dumps, copies, counts.
//
// A Dialer is safe for concurrent use.
type Dialer struct {
	cfg DialerConfig

	mu      sync.Mutex
	repairs map[string][]time.Time // tenant id → its recent login repairs
	blocked map[string]time.Time   // tenant id → until when its logins are refused
}

// NewDialer returns a Dialer.
func NewDialer(cfg DialerConfig) (*Dialer, error) {
	if cfg.Store == nil || cfg.Sealer == nil {
		return nil, errors.New("shardmap: DialerConfig.Store and Sealer are required")
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.ApplicationName == "" {
		cfg.ApplicationName = "silo"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Dialer{cfg: cfg, repairs: map[string][]time.Time{}, blocked: map[string]time.Time{}}, nil
}

// AdminConfig returns the connection settings of the shard's admin role,
// on database db ("" keeps the database of the shard's DSN), with the safe
// search_path. It returns ENOTFOUND for an unknown shard and EINTERNAL for
// a DSN that does not parse.
func (d *Dialer) AdminConfig(ctx context.Context, shard, db string) (*pgx.ConnConfig, error) {
	dsn, err := d.cfg.Store.ShardDSN(ctx, shard)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, silo.Errorf(silo.EINTERNAL, "shard %q has an invalid DSN", shard)
	}
	if db != "" {
		cfg.Database = db
	}
	cfg.ConnectTimeout = d.cfg.ConnectTimeout
	cfg.RuntimeParams["application_name"] = d.cfg.ApplicationName
	maps.Copy(cfg.RuntimeParams, adminSettings)
	return cfg, nil
}

// TenantConfig returns the connection settings of tenant t's own login
// role on its database on shard (t.Shard when shard is ""): during a move,
// the tenant has the same role and password on both shards. It returns
// ENOTFOUND for a tenant without credentials (a tombstone).
func (d *Dialer) TenantConfig(ctx context.Context, t *silo.Tenant, shard string) (*pgx.ConnConfig, error) {
	if shard == "" {
		shard = t.Shard
	}
	if err := silo.ValidateDatabaseName(t.Database); err != nil {
		return nil, err
	}
	cfg, err := d.AdminConfig(ctx, shard, t.Database)
	if err != nil {
		return nil, err
	}
	password, err := d.TenantPassword(ctx, t.ID)
	if err != nil {
		return nil, err
	}
	cfg.User, cfg.Password = t.Database, password
	// The tenant's own settings (ALTER ROLE … SET) apply: its session has
	// its rights, whatever it sets.
	for k := range adminSettings {
		delete(cfg.RuntimeParams, k)
	}
	return cfg, nil
}

// Conninfo is cfg as a libpq connection string (for pg_dump, and for a
// subscription's CONNECTION), without its password: pass that apart
// (PGPASSWORD), or append it where it must be kept (a subscription).
func Conninfo(cfg *pgx.ConnConfig) string {
	s := fmt.Sprintf("host=%s port=%d user=%s dbname=%s connect_timeout=%d",
		QuoteConninfo(cfg.Host), cfg.Port, QuoteConninfo(cfg.User), QuoteConninfo(cfg.Database), max(1, int(cfg.ConnectTimeout.Seconds())))
	if cfg.TLSConfig == nil {
		s += " sslmode=disable"
	}
	return s
}

// QuoteConninfo quotes a libpq keyword value.
func QuoteConninfo(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// TenantPassword opens tenant id's sealed role password.
func (d *Dialer) TenantPassword(ctx context.Context, id string) (string, error) {
	sealed, err := d.cfg.Store.TenantSecret(ctx, id)
	if err != nil {
		return "", err
	}
	password, err := d.cfg.Sealer.Open(sealed, id)
	if err != nil {
		return "", err
	}
	return string(password), nil
}

// ConnectAdmin opens an admin session on database db of a shard (see
// AdminConfig). The caller closes it. Errors are ShardError's.
func (d *Dialer) ConnectAdmin(ctx context.Context, shard, db string) (*pgx.Conn, error) {
	cfg, err := d.AdminConfig(ctx, shard, db)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, ShardError(err, shard)
	}
	return conn, nil
}

// ConnectTenant opens a session of tenant t's own role on its database on
// shard ("" for t.Shard). A login refused for a wrong password (the tenant
// changed it: any role may ALTER ROLE CURRENT_USER PASSWORD) is repaired
// once with RepairLogin and tried again. The caller closes the session.
func (d *Dialer) ConnectTenant(ctx context.Context, t *silo.Tenant, shard string) (*pgx.Conn, error) {
	if shard == "" {
		shard = t.Shard
	}
	if err := d.LoginBlocked(t.ID); err != nil {
		return nil, err
	}
	cfg, err := d.TenantConfig(ctx, t, shard)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if IsAuthFailure(err) {
		if rerr := d.RepairLogin(ctx, t, shard); rerr != nil {
			return nil, rerr
		}
		conn, err = pgx.ConnectConfig(ctx, cfg)
	}
	if err != nil {
		return nil, ShardError(err, shard)
	}
	return conn, nil
}

// TenantPool returns a small pool of tenant t's own role on its database
// on shard ("" for t.Shard), for libraries that need one (goose), with
// one connection made (and a refused password repaired, as ConnectTenant
// does). The caller closes it.
func (d *Dialer) TenantPool(ctx context.Context, t *silo.Tenant, shard string, maxConns int32) (*pgxpool.Pool, error) {
	if shard == "" {
		shard = t.Shard
	}
	cfg, err := d.TenantConfig(ctx, t, shard)
	if err != nil {
		return nil, err
	}
	pool, err := PoolOf(ctx, cfg, maxConns)
	if err != nil {
		return nil, silo.Errorf(silo.EINTERNAL, "shard %q has an invalid DSN", shard)
	}
	err = pool.Ping(ctx)
	if IsAuthFailure(err) {
		if err = d.RepairLogin(ctx, t, shard); err == nil {
			err = pool.Ping(ctx)
		}
	}
	if err != nil {
		pool.Close()
		return nil, ShardError(err, shard)
	}
	return pool, nil
}

// PoolOf returns a pool of at most maxConns connections with cfg's
// settings. Pools connect lazily: the first use fails on a bad config.
func PoolOf(ctx context.Context, cfg *pgx.ConnConfig, maxConns int32) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig("")
	if err != nil {
		return nil, err
	}
	pcfg.ConnConfig = cfg
	pcfg.MaxConns = maxConns
	return pgxpool.NewWithConfig(ctx, pcfg)
}

// LoginBlocked returns EUNAVAILABLE, with a retry hint, while tenant id's
// logins are refused for its role's password changing again and again
// (see RepairLogin); nil otherwise.
func (d *Dialer) LoginBlocked(id string) error {
	d.mu.Lock()
	until, ok := d.blocked[id]
	if ok && time.Now().After(until) {
		delete(d.blocked, id)
		ok = false
	}
	d.mu.Unlock()
	if !ok {
		return nil
	}
	return &silo.Error{Code: silo.EUNAVAILABLE, RetryAfter: time.Until(until).Round(time.Second),
		Message: fmt.Sprintf("tenant %q's role keeps refusing Silo's logins (its password was changed %d times within %s); its connections are refused until %s",
			id, maxRepairs+1, repairWindow, until.UTC().Format(time.RFC3339))}
}

// IsAuthFailure reports whether err is a refused password (SQLSTATE
// 28P01): the tenant changed its role's password, or the role is gone.
func IsAuthFailure(err error) bool {
	return SQLState(err) == "28P01"
}

// RepairLogin writes tenant t's sealed password back to its role on shard,
// as a SCRAM verifier, after a login was refused: a tenant may change its
// own role's password, which would lock Silo out of it. The repair is
// audited (tenant.repair-login) and happens at most once every few seconds
// per tenant; a repair asked for sooner does nothing. It never
// changes whether the role may log in (a suspended tenant stays
// suspended).
func (d *Dialer) RepairLogin(ctx context.Context, t *silo.Tenant, shard string) error {
	if shard == "" {
		shard = t.Shard
	}
	if err := silo.ValidateDatabaseName(t.Database); err != nil {
		return err
	}
	if err := d.LoginBlocked(t.ID); err != nil {
		return err
	}
	d.mu.Lock()
	now := time.Now()
	recent := d.repairs[t.ID][:0:0]
	for _, at := range d.repairs[t.ID] {
		if now.Sub(at) < repairWindow {
			recent = append(recent, at)
		}
	}
	if n := len(recent); n > 0 && now.Sub(recent[n-1]) < repairEvery {
		d.mu.Unlock()
		return nil // repaired moments ago: the caller's one retry says whether it held
	}
	if len(recent) >= maxRepairs {
		d.blocked[t.ID] = now.Add(blockFor)
		delete(d.repairs, t.ID)
		d.mu.Unlock()
		d.cfg.Logger.Warn("a tenant's role keeps refusing Silo's logins; its logins are refused for a while", "tenant", t.ID, "for", blockFor)
		_ = d.cfg.Store.Mutate(silo.WithActor(ctx, silo.Actor{Name: "system"}), "tenant.login-blocked", "tenant/"+t.ID,
			map[string]any{"minutes": int(blockFor.Minutes())}, func(pgx.Tx) error { return nil })
		return d.LoginBlocked(t.ID)
	}
	d.repairs[t.ID] = append(recent, now)
	for id, times := range d.repairs {
		if now.Sub(times[len(times)-1]) > repairWindow {
			delete(d.repairs, id)
		}
	}
	d.mu.Unlock()
	password, err := d.TenantPassword(ctx, t.ID)
	if err != nil {
		return err
	}
	verifier, err := ScramVerifier(password)
	if err != nil {
		return err
	}
	ctx = silo.WithActor(ctx, silo.Actor{Name: "system"})
	err = d.cfg.Store.Mutate(ctx, "tenant.repair-login", "tenant/"+t.ID, map[string]any{"shard": shard}, func(pgx.Tx) error {
		conn, err := d.ConnectAdmin(ctx, shard, "")
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		// DDL takes no parameters; the verifier is base64 and "$:" only.
		_, err = conn.Exec(ctx, "ALTER ROLE "+pgx.Identifier{t.Database}.Sanitize()+" PASSWORD '"+verifier+"'")
		return ShardError(err, shard)
	})
	if err != nil {
		return err
	}
	d.cfg.Logger.Warn("a tenant role's login was refused; its password was set back", "tenant", t.ID, "shard", shard)
	return nil
}

// ShardError gives a shard failure a code: unreachable or timed out is
// EUNAVAILABLE (try later), anything else EINTERNAL. The message names the
// shard and never the DSN. A *silo.Error is returned as it is.
func ShardError(err error, shard string) error {
	if err == nil {
		return nil
	}
	if _, ok := errors.AsType[*silo.Error](err); ok {
		return err
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		class := pgErr.Code[:2]
		if class == "08" || class == "57" || class == "53" {
			return silo.WrapError(err, silo.EUNAVAILABLE, "shard %q is unavailable: %s", shard, pgErr.Message)
		}
		return silo.WrapError(err, silo.EINTERNAL, "shard %q: %s (SQLSTATE %s)", shard, pgErr.Message, pgErr.Code)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || pgconn.Timeout(err) {
		return silo.WrapError(err, silo.EUNAVAILABLE, "shard %q did not answer in time", shard)
	}
	msg := strings.Join(strings.Fields(err.Error()), " ")
	if i := strings.Index(msg, "\n"); i >= 0 {
		msg = msg[:i]
	}
	return silo.WrapError(err, silo.EUNAVAILABLE, "shard %q is unreachable: %s", shard, msg)
}

// SQLState returns the SQLSTATE of a PostgreSQL error in err's chain, or "".
func SQLState(err error) string {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		return pgErr.Code
	}
	return ""
}
