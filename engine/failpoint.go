package engine

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/silo-db/silo"
)

// FailpointsEnv names the environment variable that arms failpoints in a
// server: a comma-separated list of name=action, for example
//
//	SILO_FAILPOINTS=move/after-flip=kill,create/before-activate=error*2
//
// Actions: "kill" ends the process with SIGKILL, as a crash would; "error"
// fails the step; "sleep(250ms)" pauses. A suffix "*N" fires the action N
// times only. Every step boundary of every operation is a failpoint
// (KIND/before-STEP and KIND/after-STEP); steps add their own (such as
// move/after-flip, migrate/mid-fleet). They are for crash tests: a server
// with any armed logs a warning at start.
const FailpointsEnv = "SILO_FAILPOINTS"

// Failpoints are armed failpoints. The zero value and nil arm none.
type Failpoints struct {
	mu     sync.Mutex
	points map[string]*failpoint
}

type failpoint struct {
	action string // kill, error, sleep
	sleep  time.Duration
	left   int // fires left; -1 for always
}

// ParseFailpoints parses a FailpointsEnv value.
func ParseFailpoints(spec string) (*Failpoints, error) {
	f := &Failpoints{points: map[string]*failpoint{}}
	for item := range strings.SplitSeq(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, action, ok := strings.Cut(item, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("failpoint %q: want name=action", item)
		}
		fp := &failpoint{left: -1}
		if a, n, ok := strings.Cut(action, "*"); ok {
			count, err := strconv.Atoi(n)
			if err != nil || count < 1 {
				return nil, fmt.Errorf("failpoint %q: bad count %q", item, n)
			}
			action, fp.left = a, count
		}
		switch {
		case action == "kill" || action == "error":
			fp.action = action
		case strings.HasPrefix(action, "sleep(") && strings.HasSuffix(action, ")"):
			d, err := time.ParseDuration(action[len("sleep(") : len(action)-1])
			if err != nil {
				return nil, fmt.Errorf("failpoint %q: %v", item, err)
			}
			fp.action, fp.sleep = "sleep", d
		default:
			return nil, fmt.Errorf("failpoint %q: unknown action %q (want kill, error or sleep(DURATION))", item, action)
		}
		f.points[name] = fp
	}
	return f, nil
}

// FailpointsFromEnv returns the failpoints FailpointsEnv arms, or nil.
func FailpointsFromEnv() (*Failpoints, error) {
	spec := os.Getenv(FailpointsEnv)
	if spec == "" {
		return nil, nil
	}
	return ParseFailpoints(spec)
}

// Names returns the armed failpoints' names.
func (f *Failpoints) Names() []string {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for n := range f.points {
		names = append(names, n)
	}
	return names
}

// ErrFailpoint is the error an "error" failpoint returns.
var ErrFailpoint = silo.Errorf(silo.EUNAVAILABLE, "failpoint")

// Eval fires the failpoint name if it is armed: it kills the process,
// sleeps, or returns an error wrapping ErrFailpoint. It returns nil
// otherwise.
func (f *Failpoints) Eval(ctx context.Context, log *slog.Logger, name string) error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	fp := f.points[name]
	if fp == nil || fp.left == 0 {
		f.mu.Unlock()
		return nil
	}
	if fp.left > 0 {
		fp.left--
	}
	action, sleep := fp.action, fp.sleep
	f.mu.Unlock()
	log.WarnContext(ctx, "failpoint fired", "failpoint", name, "action", action)
	switch action {
	case "kill":
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	case "sleep":
		select {
		case <-time.After(sleep):
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}
	return silo.WrapError(ErrFailpoint, silo.EUNAVAILABLE, "failpoint %s", name)
}
