package proxy_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/router"
)

// A login tells nothing of whether a tenant exists: another tenant's key
// on a real tenant and any key on an unknown one get the same exchange (a
// salt that is the same at every attempt, the same iterations) and the
// same FATAL 28P01, byte for byte but for the user name. No timing is
// measured: what differs would have to show in the bytes.
func TestHostileLoginEnumeration(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	_, keyA := b.tenant(t, "alpha", "")
	real, _ := b.tenant(t, "bravo", "")
	unknown := strings.Replace(real, "bravo", "bravx", 1) // as long
	type answer struct {
		salt  []byte
		iters int
		final []byte // all that follows the client-final-message
	}
	attempt := func(user string) answer {
		w := b.wire(t)
		w.beginSASL(user)
		s := newScram(keyA)
		w.serverFirst(s)
		w.send(&pgproto3.SASLResponse{Data: s.clientFinal(s.nonce)})
		rest, err := io.ReadAll(w.nc)
		require.NoError(t, err)
		return answer{s.salt, s.iters, bytes.ReplaceAll(rest, []byte(user), bytes.Repeat([]byte("X"), len(user)))}
	}
	r1, r2 := attempt(real), attempt(real)
	u1, u2 := attempt(unknown), attempt(unknown)
	require.Equal(t, r1.salt, r2.salt, "a tenant's salt is its own")
	require.Equal(t, u1.salt, u2.salt, "an unknown tenant's salt is as stable")
	require.NotEqual(t, r1.salt, u1.salt)
	require.Len(t, u1.salt, len(r1.salt))
	require.Equal(t, r1.iters, u1.iters)
	require.Equal(t, r1.final, r2.final)
	require.Equal(t, r1.final, u1.final, "the refusals differ only in the user name")
	fe := pgproto3.NewFrontend(bytes.NewReader(r1.final), io.Discard)
	msg, err := fe.Receive()
	require.NoError(t, err)
	e, ok := msg.(*pgproto3.ErrorResponse)
	require.True(t, ok, "%T", msg)
	require.Equal(t, "28P01", e.Code)
	require.Equal(t, "FATAL", e.Severity)
}

// cancelRequest sends a cancel request for pid with secret, as a client
// does: on a connection of its own, which the endpoint closes.
func (b *bundle) cancelRequest(t *testing.T, pid uint32, secret []byte) {
	t.Helper()
	body := binary.BigEndian.AppendUint32(nil, 80877102)
	body = binary.BigEndian.AppendUint32(body, pid)
	body = append(body, secret...)
	w := b.wire(t)
	w.write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...))
	rest, _ := io.ReadAll(w.nc)
	require.Empty(t, rest, "a cancel request is answered with nothing")
}

// A cancel request cancels nothing unless it names a client of this
// endpoint with that client's secret key: a tenant that learned another
// tenant's client's process id (here, given it) and tries secrets, its own
// among them, leaves that client's query running to its end.
func TestHostileCancelAcrossTenants(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	a, keyA := b.tenant(t, "canceller", "s1")
	v, keyV := b.tenant(t, "sleeper", "s1")
	attacker, err := pgx.Connect(b.ctx, b.dsn(a, keyA, a))
	require.NoError(t, err)
	defer attacker.Close(b.ctx)
	victim, err := pgx.Connect(b.ctx, b.dsn(v, keyV, v))
	require.NoError(t, err)
	defer victim.Close(b.ctx)
	pid, secret := victim.PgConn().PID(), victim.PgConn().SecretKey()
	require.Len(t, secret, 4)
	var wrong [][]byte
	for i := range 30 {
		s := make([]byte, 4)
		_, _ = rand.Read(s)
		if i == 0 {
			s = attacker.PgConn().SecretKey()
		}
		wrong = append(wrong, s)
	}
	flipped := append([]byte(nil), secret...)
	flipped[3] ^= 1
	wrong = append(wrong, flipped, append(append([]byte(nil), secret...), 0), make([]byte, 32))

	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := victim.Exec(b.ctx, "SELECT pg_sleep(1.5)")
		done <- err
	}()
	// The victim's query is running on its shard.
	admin, err := pgx.Connect(b.ctx, b.fleet.Shards[0].DSN("postgres"))
	require.NoError(t, err)
	defer admin.Close(b.ctx)
	require.Eventually(t, func() bool {
		var n int
		err := admin.QueryRow(b.ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(1.5)'").Scan(&n)
		return err == nil && n == 1
	}, 5*time.Second, 10*time.Millisecond)
	for _, s := range wrong {
		b.cancelRequest(t, pid, s)
	}
	b.cancelRequest(t, attacker.PgConn().PID(), secret) // its own pid, the victim's secret
	require.NoError(t, <-done, "the victim's query ran to its end")
	require.GreaterOrEqual(t, time.Since(start), 1500*time.Millisecond)
	// The right one works.
	go func() {
		_, err := victim.Exec(b.ctx, "SELECT pg_sleep(5)")
		done <- err
	}()
	require.Eventually(t, func() bool {
		b.cancelRequest(t, pid, secret)
		select {
		case err := <-done:
			require.Equal(t, "57014", pgCode(err), "%v", err)
			return true
		default:
			return false
		}
	}, 4*time.Second, 100*time.Millisecond)
}

// Tenants never share a server connection: under load, with a shard
// budget so small that idle connections pass from one tenant to the
// other, every statement of a tenant's clients runs in a backend of its
// own role and database that no statement of the other tenant ever ran in.
func TestHostileTenantsNeverShareConnections(t *testing.T) {
	t.Parallel()
	b := setup(t, options{router: router.Config{ShardBudget: 3, TenantMaxConns: 3}})
	type backend struct{ pid, started string }
	type tenant struct {
		id, key  string
		seen     map[backend]bool
		identity map[string]bool // current_user and current_database
	}
	var tenants []*tenant
	for _, p := range []string{"left", "right"} {
		id, key := b.tenant(t, p, "s1")
		tenants = append(tenants, &tenant{id: id, key: key, seen: map[backend]bool{}, identity: map[string]bool{}})
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for _, tn := range tenants {
		for c := range 3 {
			wg.Go(func() {
				conn, err := pgx.Connect(b.ctx, b.dsn(tn.id, tn.key, tn.id))
				if err != nil {
					errs <- err
					return
				}
				defer conn.Close(b.ctx)
				for i := range 25 {
					var pid, started, who string
					sql := `SELECT pg_backend_pid()::text, backend_start::text, current_user || '/' || current_database()
						FROM pg_stat_activity WHERE pid = pg_backend_pid()`
					if (i+c)%3 == 0 {
						sql = "BEGIN; " + sql + "; COMMIT" // holds its connection a little longer
						res, err := conn.PgConn().Exec(b.ctx, sql).ReadAll()
						if err != nil {
							errs <- err
							return
						}
						row := res[1].Rows[0]
						pid, started, who = string(row[0]), string(row[1]), string(row[2])
					} else if err := conn.QueryRow(b.ctx, sql).Scan(&pid, &started, &who); err != nil {
						errs <- fmt.Errorf("%s: %w", tn.id, err)
						return
					}
					mu.Lock()
					tn.seen[backend{pid, started}] = true
					tn.identity[who] = true
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	left, right := tenants[0], tenants[1]
	require.Len(t, left.identity, 1, "one role and database: %v", left.identity)
	require.Len(t, right.identity, 1, "one role and database: %v", right.identity)
	require.NotEqual(t, left.identity, right.identity)
	for be := range left.seen {
		require.False(t, right.seen[be], "backend %v served both tenants", be)
	}
	t.Logf("backends: %d and %d", len(left.seen), len(right.seen))
}
