package api_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/api"
	"github.com/silo-db/silo/internal/catalogtest"
	"github.com/silo-db/silo/internal/pgtest"
)

// minHTTPRatio is the target: reading a shard through the whole HTTP stack
// keeps at least this share of the throughput of calling the catalog
// directly. A read through the API is one loopback HTTP round trip plus the
// same catalog round trip, and the two cost about the same, so 0.5 is the
// ceiling; 0.4 leaves 20% for routing, auth, JSON, logs and metrics.
const minHTTPRatio = 0.4

// BenchmarkShardRead interleaves a direct catalog read and the same read
// through the API in one loop, so machine noise hits both alike, and reports
// their ratio.
func BenchmarkShardRead(b *testing.B) {
	fleet := pgtest.Start(b)
	ctx := context.Background()
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	pool, store := catalogtest.New(b, log)
	_, err := store.CreateShard(ctx, silo.Shard{Name: "bench", DSN: fleet.Shards[0].DSN("postgres")})
	require.NoError(b, err)
	prov, eng := newProvisioner(b, pool, store, log)
	require.NoError(b, eng.Start(ctx))
	srv, err := api.New(api.Config{Catalog: store, Provisioner: prov, AdminToken: token, Logger: log})
	require.NoError(b, err)
	ts := httptest.NewServer(srv)
	defer ts.Close()
	client := ts.Client()
	req, err := http.NewRequest("GET", ts.URL+"/v1/shards/bench", nil)
	require.NoError(b, err)
	req.Header.Set("Authorization", "Bearer "+token)

	b.ReportAllocs()
	var direct, viaHTTP time.Duration
	for b.Loop() {
		start := time.Now()
		if _, err := store.GetShard(ctx, "bench"); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
		direct += mid.Sub(start)
		viaHTTP += time.Since(mid)
	}
	n := float64(b.N)
	ratio := float64(direct) / float64(viaHTTP)
	b.ReportMetric(float64(direct.Microseconds())/n, "direct-µs/op")
	b.ReportMetric(float64(viaHTTP.Microseconds())/n, "http-µs/op")
	b.ReportMetric(ratio, "http/direct-throughput")
	if b.N >= 100 && ratio < minHTTPRatio {
		b.Errorf("HTTP reads reach %.2f of direct throughput; the target is %.2f", ratio, minHTTPRatio)
	}
}
