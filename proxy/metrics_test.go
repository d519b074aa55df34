package proxy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// The endpoint's metrics after some traffic: clients, logins by result,
// transactions, queries, the wait for a server connection, statements
// prepared again; and no label holds a tenant id.
func TestMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	id, token := b.tenant(t, "metered", "")
	ctx := b.ctx

	_, err := pgx.Connect(ctx, b.dsn(id, flip(token), id))
	require.Equal(t, "28P01", pgCode(err))
	one, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer one.Close(ctx)
	two, err := pgx.Connect(ctx, b.dsn(id, token, id))
	require.NoError(t, err)
	defer two.Close(ctx)
	require.Equal(t, 2.0, metricValue(t, b.reg, "silo_proxy_client_connections"))
	require.Equal(t, 2.0, metricValue(t, b.reg, "silo_proxy_logins_total", "result", "ok"))
	require.Equal(t, 1.0, metricValue(t, b.reg, "silo_proxy_logins_total", "result", "refused"))

	txs0 := metricValue(t, b.reg, "silo_proxy_transactions_total")
	queries0 := metricValue(t, b.reg, "silo_proxy_queries_total")
	waits0 := metricValue(t, b.reg, "silo_proxy_server_wait_seconds")
	_, err = one.Exec(ctx, "CREATE TABLE m (n int)")
	require.NoError(t, err)
	// two prepares its insert on the only idle server connection; one
	// then holds that connection in a transaction, so two's next insert
	// runs on a new one, which lacks the statement.
	_, err = two.Exec(ctx, "INSERT INTO m VALUES ($1)", 1)
	require.NoError(t, err)
	tx, err := one.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "INSERT INTO m VALUES (100)")
	require.NoError(t, err)
	for i := 2; i <= 5; i++ {
		_, err = two.Exec(ctx, "INSERT INTO m VALUES ($1)", i)
		require.NoError(t, err)
	}
	require.NoError(t, tx.Commit(ctx))
	var n int
	require.NoError(t, one.QueryRow(ctx, "SELECT count(*) FROM m").Scan(&n))
	require.Equal(t, 6, n)

	// CREATE, 5 inserts, BEGIN … COMMIT, the count: 8 transactions, each
	// its wait for a server connection; 10 statements at least.
	require.GreaterOrEqual(t, metricValue(t, b.reg, "silo_proxy_transactions_total")-txs0, 8.0)
	require.GreaterOrEqual(t, metricValue(t, b.reg, "silo_proxy_server_wait_seconds")-waits0, 8.0)
	require.GreaterOrEqual(t, metricValue(t, b.reg, "silo_proxy_queries_total")-queries0, 10.0)
	require.GreaterOrEqual(t, metricValue(t, b.reg, "silo_proxy_reprepares_total"), 1.0, "two's insert prepared again on a second server connection")

	two.Close(ctx)
	require.Eventually(t, func() bool { return metricValue(t, b.reg, "silo_proxy_client_connections") == 1 },
		5*time.Second, 10*time.Millisecond, "a client that left is no longer counted")

	families, err := b.reg.Gather()
	require.NoError(t, err)
	seen := map[string]bool{}
	for _, f := range families {
		seen[f.GetName()] = true
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				require.False(t, strings.Contains(l.GetValue(), id), "%s{%s=%q} holds a tenant id", f.GetName(), l.GetName(), l.GetValue())
				require.False(t, strings.Contains(l.GetValue(), strings.ReplaceAll(id, "-", "_")), "%s{%s=%q} holds a tenant's database", f.GetName(), l.GetName(), l.GetValue())
			}
		}
	}
	for _, name := range []string{"silo_proxy_client_connections", "silo_proxy_logins_total", "silo_proxy_transactions_total",
		"silo_proxy_queries_total", "silo_proxy_server_wait_seconds", "silo_proxy_reprepares_total"} {
		require.True(t, seen[name], "%s is exported", name)
	}
}
