package silo

import (
	"context"
	"time"
)

// AuditEntry records one mutation attempt: who did what to which object,
// with which parameters (never secrets), and how it ended.
type AuditEntry struct {
	ID        int64
	Time      time.Time
	Actor     string
	Action    string // e.g. "shard.create"
	Target    string // e.g. "shard/eu-1"
	Params    map[string]any
	Result    string // "ok" or an error code
	Error     string // the user-facing message when Result is not "ok"
	RequestID string
}

// AuditResultOK is the Result of an entry whose mutation succeeded.
const AuditResultOK = "ok"

// Actor identifies who asks for a change, for the audit log.
type Actor struct {
	Name      string // "admin", "cli", "system", a key id...
	RequestID string
}

type actorKey struct{}

// WithActor returns a context carrying the actor, read by code that writes
// audit entries.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFrom returns the actor carried by ctx, or the "system" actor.
func ActorFrom(ctx context.Context) Actor {
	if a, ok := ctx.Value(actorKey{}).(Actor); ok {
		return a
	}
	return Actor{Name: "system"}
}
