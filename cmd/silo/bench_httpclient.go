package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// loadClient posts data API requests over HTTP/1.1 keep-alive connections
// with as little work of its own as it can, as wrk or oha do: each request
// is written in one system call from bytes laid out ahead, and each response
// read from a buffer with only its status line and framing parsed. On the
// bench's 2 cores net/http's client used as much CPU per request as the
// server it measured; this one leaves that CPU to the server. It is for
// load, not for general use: it speaks only to the Silo API.
type loadClient struct {
	addr     string
	basePath string // the URL's path, which the API's paths follow
	header   string // the request's fixed lines, but the request line and length
	idle     chan *loadConn
}

type loadConn struct {
	conn net.Conn
	r    *bufio.Reader
	buf  []byte
}

// newLoadClient makes a client for the API at rawURL that keeps up to
// maxIdle connections open.
func newLoadClient(rawURL, token string, maxIdle int) (*loadClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("the load client speaks plain http, not %q", u.Scheme)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return &loadClient{
		addr:     addr,
		basePath: u.Path,
		header: "Host: " + u.Host + "\r\nAuthorization: Bearer " + token +
			"\r\nContent-Type: application/json\r\nContent-Length: ",
		idle: make(chan *loadConn, maxIdle),
	}, nil
}

// Post posts body to path and returns the status and body of the answer.
// The body returned is valid until the next call on the same connection:
// callers use it at once.
func (c *loadClient) Post(ctx context.Context, path string, body []byte) (int, []byte, error) {
	lc, err := c.conn(ctx)
	if err != nil {
		return 0, nil, err
	}
	status, resp, keep, err := lc.roundTrip(ctx, c.header, path, body)
	if err != nil || !keep {
		lc.conn.Close()
		return status, resp, err
	}
	// Copy the body out: the connection's buffer is reused once it is idle.
	resp = bytes.Clone(resp)
	select {
	case c.idle <- lc:
	default:
		lc.conn.Close()
	}
	return status, resp, nil
}

func (c *loadClient) conn(ctx context.Context) (*loadConn, error) {
	select {
	case lc := <-c.idle:
		return lc, nil
	default:
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, err
	}
	return &loadConn{conn: conn, r: bufio.NewReaderSize(conn, 16<<10)}, nil
}

// Close closes the idle connections.
func (c *loadClient) Close() {
	for {
		select {
		case lc := <-c.idle:
			lc.conn.Close()
		default:
			return
		}
	}
}

func (lc *loadConn) roundTrip(ctx context.Context, header, path string, body []byte) (status int, resp []byte, keep bool, err error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(30 * time.Second)
	}
	if err := lc.conn.SetDeadline(deadline); err != nil {
		return 0, nil, false, err
	}
	b := lc.buf[:0]
	b = append(b, "POST "...)
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\n"...)
	b = append(b, header...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	lc.buf = b
	if _, err := lc.conn.Write(b); err != nil {
		return 0, nil, false, err
	}
	line, err := lc.line()
	if err != nil {
		return 0, nil, false, err
	}
	// HTTP/1.1 200 OK
	if len(line) < 12 || !strings.HasPrefix(line, "HTTP/1.") {
		return 0, nil, false, fmt.Errorf("malformed status line %q", line)
	}
	if status, err = strconv.Atoi(line[9:12]); err != nil {
		return 0, nil, false, fmt.Errorf("malformed status line %q", line)
	}
	length, chunked, keep := -1, false, true
	for {
		h, err := lc.line()
		if err != nil {
			return 0, nil, false, err
		}
		if h == "" {
			break
		}
		name, value, _ := strings.Cut(h, ":")
		value = strings.TrimSpace(value)
		switch {
		case strings.EqualFold(name, "Content-Length"):
			if length, err = strconv.Atoi(value); err != nil || length < 0 {
				return 0, nil, false, fmt.Errorf("malformed Content-Length %q", value)
			}
		case strings.EqualFold(name, "Transfer-Encoding"):
			chunked = strings.EqualFold(value, "chunked")
		case strings.EqualFold(name, "Connection"):
			keep = !strings.EqualFold(value, "close")
		}
	}
	switch {
	case chunked:
		resp, err = lc.chunks()
	case length >= 0:
		resp, err = lc.n(length)
	default:
		resp, err = io.ReadAll(lc.r) // to the end of the connection
		keep = false
	}
	return status, resp, keep && err == nil, err
}

// line reads a header line without its CRLF.
func (lc *loadConn) line() (string, error) {
	l, err := lc.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", errors.New("a response header line is too long")
		}
		return "", err
	}
	return string(bytes.TrimRight(l, "\r\n")), nil
}

// n reads the next n bytes, from the buffer when they fit in it.
func (lc *loadConn) n(n int) ([]byte, error) {
	if n <= lc.r.Size() {
		p, err := lc.r.Peek(n)
		if err != nil {
			return nil, err
		}
		_, _ = lc.r.Discard(n)
		return p, nil
	}
	p := make([]byte, n)
	_, err := io.ReadFull(lc.r, p)
	return p, err
}

func (lc *loadConn) chunks() ([]byte, error) {
	var out []byte
	for {
		l, err := lc.line()
		if err != nil {
			return nil, err
		}
		size, _, _ := strings.Cut(l, ";")
		n, err := strconv.ParseInt(strings.TrimSpace(size), 16, 32)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("malformed chunk size %q", l)
		}
		if n == 0 {
			for { // trailers, then the blank line
				if l, err := lc.line(); err != nil || l == "" {
					return out, err
				}
			}
		}
		p, err := lc.n(int(n))
		if err != nil {
			return nil, err
		}
		out = append(out, p...)
		if _, err := lc.line(); err != nil { // the chunk's CRLF
			return nil, err
		}
	}
}
