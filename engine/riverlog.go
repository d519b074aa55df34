package engine

import (
	"context"
	"log/slog"
)

// riverLogger is the logger River gets: its INFO lines (a producer's job
// counts every 5 seconds, each maintenance service's "ran successfully")
// are routine, and go out at DEBUG; its warnings and errors stay as they
// are. An idle server's log at INFO is then quiet.
func riverLogger(log *slog.Logger) *slog.Logger {
	return slog.New(demoteInfo{log.Handler()}).With("component", "river")
}

// demoteInfo passes records to h, INFO ones as DEBUG.
type demoteInfo struct{ h slog.Handler }

func demoted(l slog.Level) slog.Level {
	if l == slog.LevelInfo {
		return slog.LevelDebug
	}
	return l
}

func (d demoteInfo) Enabled(ctx context.Context, l slog.Level) bool {
	return d.h.Enabled(ctx, demoted(l))
}

func (d demoteInfo) Handle(ctx context.Context, r slog.Record) error {
	r.Level = demoted(r.Level)
	return d.h.Handle(ctx, r)
}

func (d demoteInfo) WithAttrs(as []slog.Attr) slog.Handler { return demoteInfo{d.h.WithAttrs(as)} }
func (d demoteInfo) WithGroup(name string) slog.Handler    { return demoteInfo{d.h.WithGroup(name)} }
