package router

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// DefaultMaxMessageBytes is the default of Config.MaxMessageBytes: 16 MiB,
// room for a row whose JSON fills the HTTP API's 10 MiB result cap even as
// bytea, whose text (hex) is half as long again as its JSON (base64).
const DefaultMaxMessageBytes = 16 << 20

// MinMaxMessageBytes is the least Config.MaxMessageBytes: PostgreSQL's
// widest row description (1,664 columns of 63-byte names) takes 140 KiB.
const MinMaxMessageBytes = 1 << 20

// ErrCopyRefused fails a query sent with the extended protocol that
// PostgreSQL answered by starting a COPY (COPY … FROM STDIN or TO STDOUT).
// pgx cannot run one that way: it would wait for the copy-in until its
// deadline, or drop the copy-out's rows and report success. The connection
// is closed instead, which ends the statement on the shard. COPY through
// pgx's CopyFrom and CopyTo, which use the simple protocol, is unaffected.
var ErrCopyRefused = errors.New("COPY FROM STDIN and COPY TO STDOUT cannot run as an extended-protocol query")

// connLimits bound what a tenant connection reads from its shard, so that
// a tenant's SQL cannot drive this process's memory up: each Router's
// resolver installs them on every tenant connection's settings.
type connLimits struct {
	maxMessageBytes int
}

// install sets cfg up so that:
//   - no protocol message over maxMessageBytes is read: pgx would read it
//     whole into memory before anything could look at it (one
//     `SELECT repeat('x', 400000000)` took this server from 154 MB to
//     2.1 GB). The query fails with *pgproto3.ExceededMaxBodyLenErr on the
//     message's header, and pgx closes the connection on that error, so it
//     is discarded, never reused;
//   - an extended-protocol query that starts a COPY fails with
//     ErrCopyRefused, at once (see copyGuard);
//   - notifications are dropped: pgx buffers every one a connection
//     receives until WaitForNotification takes it, and a tenant's SQL can
//     LISTEN and notify itself by the million in one transaction. Tenant
//     connections are shared by calls, so none waits for notifications.
func (l connLimits) install(cfg *pgx.ConnConfig) {
	cfg.MaxProtocolMessageBodyLen = l.maxMessageBytes
	cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		return newGuardedFrontend(&copyGuard{r: r, w: w})
	}
	cfg.OnNotification = func(*pgconn.PgConn, *pgconn.Notification) {}
}

// copyGuard sits between a connection's frontend and its socket (after
// TLS). It follows the message types written and read: once the frontend
// has sent an Execute (the extended protocol), a CopyInResponse,
// CopyOutResponse or CopyBothResponse fails the read with ErrCopyRefused
// before pgx sees it. A simple Query sent since allows COPY, as pgx's
// CopyFrom and CopyTo need.
type copyGuard struct {
	r io.Reader
	w io.Writer
	// extended is whether the last query written used the extended
	// protocol. pgconn's background reader may read while a write is in
	// progress.
	extended atomic.Bool
	// relay is set while a borrower that speaks the protocol itself holds
	// the connection (Lease.Relay): COPY responses pass.
	relay atomic.Bool

	// Read's position in the stream: bytes of the current message's header
	// seen, and of its body still to come.
	header [5]byte
	inHead int
	body   int
	err    error
}

// guardKey holds a connection's copyGuard in its CustomData, for
// Lease.Relay.
const guardKey = "silo.copyGuard"

func newGuardedFrontend(g *copyGuard) *pgproto3.Frontend {
	return pgproto3.NewFrontend(copyGuardReader{g}, copyGuardWriter{g})
}

// connectGuarded connects with cfg, whose frontend copyGuard is kept in the
// connection's CustomData, so a Lease can switch it to relaying.
func connectGuarded(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	if cfg.BuildFrontend == nil {
		return pgx.ConnectConfig(ctx, cfg)
	}
	cfg = cfg.Copy()
	var g *copyGuard
	cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		g = &copyGuard{r: r, w: w}
		return newGuardedFrontend(g)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil && g != nil {
		conn.PgConn().CustomData()[guardKey] = g
	}
	return conn, err
}

type copyGuardReader struct{ g *copyGuard }
type copyGuardWriter struct{ g *copyGuard }

// Read passes on what the server sent, up to the start of a refused COPY
// response; the next Read returns ErrCopyRefused.
func (cr copyGuardReader) Read(p []byte) (int, error) {
	g := cr.g
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	for i := 0; i < n; {
		if g.body > 0 {
			skip := min(g.body, n-i)
			g.body -= skip
			i += skip
			continue
		}
		if g.inHead == 0 && g.extended.Load() && !g.relay.Load() {
			switch p[i] {
			case 'G', 'H', 'W': // CopyInResponse, CopyOutResponse, CopyBothResponse
				g.err = ErrCopyRefused
				if i == 0 {
					return 0, g.err
				}
				return i, nil
			}
		}
		g.header[g.inHead] = p[i]
		g.inHead++
		i++
		if g.inHead == len(g.header) {
			g.inHead = 0
			g.body = max(0, int(int32(binary.BigEndian.Uint32(g.header[1:])))-4)
		}
	}
	return n, err
}

// Write notes whether the messages written hold a simple Query or an
// Execute. The frontend writes whole messages; a buffer that does not
// parse (the startup message has no type byte) is passed on unread.
func (cw copyGuardWriter) Write(p []byte) (int, error) {
	for rest := p; len(rest) >= 5; {
		n := int(int32(binary.BigEndian.Uint32(rest[1:5])))
		if n < 4 || 1+n > len(rest) {
			break
		}
		switch rest[0] {
		case 'Q':
			cw.g.extended.Store(false)
		case 'E':
			cw.g.extended.Store(true)
		}
		rest = rest[1+n:]
	}
	return cw.g.w.Write(p)
}

// closedByLimits reports whether err is a query's failure on the limits
// that install sets, which close the connection.
func closedByLimits(err error) bool {
	_, tooLarge := errors.AsType[*pgproto3.ExceededMaxBodyLenErr](err)
	return tooLarge || errors.Is(err, ErrCopyRefused)
}
