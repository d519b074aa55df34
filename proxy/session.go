package proxy

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// serveSession runs a session-mode client: it holds the server connection
// it was welcomed on until it disconnects, and the connection is closed
// after it (its session holds whatever the client left: listens, locks,
// prepared statements). Messages pass both ways as they come, so
// notifications reach an idle client.
func (c *clientConn) serveSession() {
	l := c.lease
	conn := l.Conn()
	pg := conn.PgConn()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.pumpServer(pg)
	}()
	c.pumpClient(pg)
	// The socket closes first: the pump reading it ends at once.
	_ = pg.Conn().Close()
	<-done
	c.mu.Lock()
	c.lease = nil
	c.mu.Unlock()
	l.Discard()
}

// pumpServer passes the server's messages to the client until either side
// ends.
func (c *clientConn) pumpServer(pg *pgconn.PgConn) {
	defer c.nc.Close() // ends pumpClient's read
	for {
		msg, err := pg.ReceiveMessage(context.Background())
		if err != nil {
			if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
				c.fatal(fromSilo(pe)) // the server's own FATAL
			} else if cut := c.lease.CutOff(); cut != nil {
				c.fatal(fromSilo(cut))
			} else if !c.isKilled() && !isEOF(err) {
				c.fatal(errorf(codeConnectionFailure, "the connection to the tenant's database was lost"))
			}
			return
		}
		c.wmu.Lock()
		err = c.forward(msg)
		if err == nil && !isRowData(msg) {
			err = c.flush()
		}
		c.wmu.Unlock()
		if err != nil {
			return
		}
	}
}

// pumpClient passes the client's messages to the server until the client
// ends.
func (c *clientConn) pumpClient(pg *pgconn.PgConn) {
	var buf []byte
	for {
		msg, err := c.be.Receive()
		if err != nil {
			if !isEOF(err) && !c.isKilled() {
				c.srv.metrics.protocolErrors.Inc()
				if se, ok := errors.AsType[*sqlError](protocolError(err)); ok {
					c.fatal(se)
				}
			}
			return
		}
		write := true
		switch m := msg.(type) {
		case *pgproto3.Terminate:
			return
		case *pgproto3.Query, *pgproto3.Execute:
			c.srv.metrics.queries.Inc()
		case *pgproto3.Parse, *pgproto3.Bind, *pgproto3.Describe, *pgproto3.Close:
			write = false // sent with the Sync or Flush that follows
		case *pgproto3.CopyData:
			write = len(buf) >= flushBytes
		case *pgproto3.Sync, *pgproto3.Flush, *pgproto3.CopyDone, *pgproto3.CopyFail, *pgproto3.FunctionCall:
		default:
			c.srv.metrics.protocolErrors.Inc()
			c.fatal(fatalf(codeProtocolViolation, "invalid frontend message type %T", m))
			return
		}
		if buf, err = msg.Encode(buf); err != nil {
			c.fatal(fatalf(codeProtocolViolation, "invalid message: %v", err))
			return
		}
		if len(buf) > c.srv.cfg.MaxBatchBytes {
			c.fatal(fatalf(codeProgramLimit, "more than %d bytes of messages sent without a Sync", c.srv.cfg.MaxBatchBytes))
			return
		}
		if write {
			if _, err := pg.Conn().Write(buf); err != nil {
				return
			}
			buf = buf[:0]
		}
	}
}
