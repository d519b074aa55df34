package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The load client against net/http's server: the framings it may answer
// with, connections kept and dropped, and the request it must send.
func TestLoadClient(t *testing.T) {
	t.Parallel()
	var conns atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /base/length", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		require.Equal(t, "Bearer tok", r.Header.Get("Authorization"))
		require.Equal(t, "application/json", r.Header.Get("Content-Type"))
		_, _ = w.Write([]byte("got " + string(body)))
	})
	mux.HandleFunc("POST /base/chunked", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("one,"))
		w.(http.Flusher).Flush()
		_, _ = w.Write([]byte(strings.Repeat("x", 40000)))
	})
	mux.HandleFunc("POST /base/close", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusTeapot)
		_, _ = w.Write([]byte("bye"))
	})
	ts := httptest.NewUnstartedServer(mux)
	ts.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	ts.Start()
	t.Cleanup(ts.Close)

	c, err := newLoadClient(ts.URL+"/base", "tok", 2)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for i := range 5 {
		status, body, err := c.Post(ctx, c.basePath+"/length", []byte(`{"n":`+string(rune('0'+i))+`}`))
		require.NoError(t, err)
		require.Equal(t, 200, status)
		require.Equal(t, `got {"n":`+string(rune('0'+i))+`}`, string(body))
	}
	require.EqualValues(t, 1, conns.Load(), "one connection, kept alive")

	status, body, err := c.Post(ctx, c.basePath+"/chunked", nil)
	require.NoError(t, err)
	require.Equal(t, 200, status)
	require.Equal(t, "one,"+strings.Repeat("x", 40000), string(body))

	status, body, err = c.Post(ctx, c.basePath+"/close", nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusTeapot, status)
	require.Equal(t, "bye", string(body))
	status, _, err = c.Post(ctx, c.basePath+"/length", nil)
	require.NoError(t, err)
	require.Equal(t, 200, status)
	require.EqualValues(t, 2, conns.Load(), "a new connection after the server closed one")

	status, _, err = c.Post(ctx, c.basePath+"/missing", nil)
	require.NoError(t, err)
	require.Equal(t, 404, status)

	_, err = newLoadClient("https://example.com", "tok", 1)
	require.ErrorContains(t, err, "plain http")
	dead, err := newLoadClient("http://127.0.0.1:1", "tok", 1)
	require.NoError(t, err)
	_, _, err = dead.Post(ctx, "/", nil)
	require.Error(t, err)
}
