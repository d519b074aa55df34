package proxy_test

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/proxy"
)

// What the endpoint keeps for a client is bounded by MaxBatchBytes, its
// own bookkeeping included: tiny messages held for one Sync (7 bytes each,
// and over 100 bytes of the endpoint's each before the fix), named
// prepared statements (each kept to be prepared again on other server
// connections) and session parameters (read back after each SET). The
// endpoint serves every tenant: one client must not take its memory.
func TestHostileEndpointMemory(t *testing.T) {
	t.Parallel()
	const batch = 256 << 10
	b := setup(t, options{proxy: proxy.Config{MaxMessageBytes: 64 << 10, MaxBatchBytes: batch}})
	id, token := b.tenant(t, "hog", "")
	b.sentinel(t, id, token)

	t.Run("tiny messages", func(t *testing.T) {
		w := b.wire(t)
		w.login(id, token)
		// 2,048 Describes of 7 bytes are 14 KiB: a 20th of the cap, and
		// over it when the endpoint counts its own bookkeeping.
		var pipe []byte
		for range batch / 128 {
			pipe = append(pipe, encode(t, &pgproto3.Describe{ObjectType: 'P'})...)
		}
		w.write(pipe)
		require.Equal(t, "54000", w.fatal())
		b.sentinelOK(t, id, token)
	})
	t.Run("prepared statements", func(t *testing.T) {
		w := b.wire(t)
		w.login(id, token)
		comment := " /* " + strings.Repeat("x", 60<<10) + " */"
		code := ""
		for i := 0; i < 2*batch/len(comment) && code == ""; i++ {
			w.send(&pgproto3.Parse{Name: "s" + string(rune('a'+i)), Query: "SELECT 1" + comment}, &pgproto3.Sync{})
			for code == "" {
				msg := w.receive()
				if e, ok := msg.(*pgproto3.ErrorResponse); ok {
					require.Equal(t, "FATAL", e.Severity)
					code = e.Code
				}
				if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
					break
				}
			}
		}
		require.Equal(t, "54000", code, "statements of twice MaxBatchBytes were kept")
		w.requireClosed()
		b.sentinelOK(t, id, token)
	})
	t.Run("session parameters", func(t *testing.T) {
		w := b.wire(t)
		w.login(id, token)
		w.send(&pgproto3.Query{String: "SELECT set_config('search_path', string_agg('s' || g, ','), false) FROM generate_series(1, 60000) g"})
		// The statement ran; they are read back after its ReadyForQuery.
		for {
			if _, ok := w.receive().(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		require.Equal(t, "54000", w.fatal(), "parameters of twice MaxBatchBytes were kept")
		b.sentinelOK(t, id, token)
	})
}
