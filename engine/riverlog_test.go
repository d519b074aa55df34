package engine

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
)

// River's routine INFO lines (every 5 s while idle) reach a log at INFO
// no more; at DEBUG they do, as DEBUG; warnings stay warnings.
func TestRiverLoggerDemotesInfo(t *testing.T) {
	var buf bytes.Buffer
	log := riverLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	log.Info("producer: Producer job counts")
	require.Empty(t, buf.String())
	log.Warn("producer: job failed to complete")
	require.Contains(t, buf.String(), "level=WARN")
	require.Contains(t, buf.String(), "component=river")

	buf.Reset()
	log = riverLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	log.Info("producer: Producer job counts")
	require.Contains(t, buf.String(), "level=DEBUG")
	require.Contains(t, buf.String(), "Producer job counts")
}
