package router_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/provisioner"
	"github.com/silo-db/silo/router"
	"github.com/silo-db/silo/shardmap"
)

// adminOn connects to a tenant's database as the shard's admin.
func (b *bundle) adminOn(t *testing.T, tn *silo.Tenant) *pgx.Conn {
	t.Helper()
	i := map[string]int{"s1": 0, "s2": 1}[tn.Shard]
	conn, err := pgx.Connect(b.ctx, b.fleet.Shards[i].DSN("postgres"))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(b.ctx) })
	return conn
}

// Any role may change its own password. A tenant that does so through its
// own SQL does not lock Silo out: the next login is refused, Silo sets the
// sealed password back (audited), and the login succeeds, once.
func TestHostilePasswordChange(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := newID("pw")
	tn := b.create(t, id)
	reg := prometheus.NewRegistry()
	r := b.router(t, router2Config(reg))
	err := r.WithTenant(b.ctx, id, func(conn *pgx.Conn) error {
		if _, err := conn.Exec(b.ctx, `ALTER ROLE CURRENT_USER PASSWORD 'the-tenants-own'`); err != nil {
			return err
		}
		// A second connection while this one is busy: a new login.
		return r.WithTenant(b.ctx, id, func(conn *pgx.Conn) error {
			_, err := conn.Exec(b.ctx, "SELECT 1")
			return err
		})
	})
	require.NoError(t, err)
	require.Equal(t, 1.0, metricValue(t, reg, "silo_tenant_login_repairs_total"))
	audit, err := b.store.ListAudit(b.ctx, shardmap.AuditFilter{Target: "tenant/" + id}, silo.Page{Limit: 50})
	require.NoError(t, err)
	var repaired bool
	for _, e := range audit.Items {
		repaired = repaired || (e.Action == "tenant.repair-login" && e.Result == "ok")
	}
	require.True(t, repaired, "the repair is audited: %+v", audit.Items)
	// The tenant's own password no longer works.
	i := map[string]int{"s1": 0, "s2": 1}[tn.Shard]
	cfg, err := pgx.ParseConfig(b.fleet.Shards[i].DSN(tn.Database))
	require.NoError(t, err)
	cfg.User, cfg.Password = tn.Database, "the-tenants-own"
	_, err = pgx.ConnectConfig(b.ctx, cfg)
	require.Equal(t, "28P01", shardmap.SQLState(err), "%v", err)
}

// A login the shard refuses for good is answered at once, never retried
// in a loop until the request's deadline: a role that may not log in
// (28000) and one at its connection limit (53300).
func TestHostileRefusedLoginsFailFast(t *testing.T) {
	t.Parallel()
	b := setup(t)
	limits := silo.TenantLimits{Connections: 1, TempFileMB: 100}
	res, err := b.prov.Create(b.ctx, provisioner.CreateRequest{ID: newID("full"), Limits: &limits}, time.Minute)
	require.NoError(t, err)
	full := res.Tenant
	barred := b.create(t, newID("barred"))
	r := b.router(t, router2Config(nil))

	// 53300: the tenant's one connection is taken, outside this router.
	i := map[string]int{"s1": 0, "s2": 1}[full.Shard]
	cfg, err := pgx.ParseConfig(b.fleet.Shards[i].DSN(full.Database))
	require.NoError(t, err)
	sealer, err := shardmap.NewSealer(key)
	require.NoError(t, err)
	dialer, err := shardmap.NewDialer(shardmap.DialerConfig{Store: b.store, Sealer: sealer})
	require.NoError(t, err)
	cfg.User = full.Database
	if cfg.Password, err = dialer.TenantPassword(b.ctx, full.ID); err != nil {
		t.Fatal(err)
	}
	holder, err := pgx.ConnectConfig(b.ctx, cfg)
	require.NoError(t, err)
	defer holder.Close(b.ctx)
	start := time.Now()
	err = r.WithTenant(b.ctx, full.ID, func(*pgx.Conn) error { return nil })
	requireCode(t, err, silo.EUNAVAILABLE)
	require.Contains(t, silo.ErrorMessage(err), "connection limit")
	require.Less(t, time.Since(start), 5*time.Second, "answered at once, not retried until the 20 s deadline")

	// 28000: the role may not log in, behind the catalog's back.
	_, err = b.adminOn(t, barred).Exec(b.ctx, "ALTER ROLE "+pgx.Identifier{barred.Database}.Sanitize()+" NOLOGIN")
	require.NoError(t, err)
	start = time.Now()
	err = r.WithTenant(b.ctx, barred.ID, func(*pgx.Conn) error { return nil })
	requireCode(t, err, silo.EUNAVAILABLE)
	require.Less(t, time.Since(start), 5*time.Second, "answered at once, not retried until the 20 s deadline")
}

func router2Config(reg *prometheus.Registry) router.Config {
	cfg := router.Config{AcquireTimeout: 20 * time.Second, TenantMaxConns: 2}
	if reg != nil {
		cfg.Registry = reg
	}
	return cfg
}

// metricValue returns the value of the unlabelled counter or gauge name.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == name {
			if m := f.GetMetric()[0]; m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
