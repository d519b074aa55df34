package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/api"
)

// waitFlags are --wait and --wait-timeout, the same on every command that
// starts an operation: whether the command follows the operation to its
// end, and for how long at most. The wait is the command's, never the
// operation's: when it ends (the timeout, Ctrl-C), the operation goes on,
// and the command says how to follow it, with exit status 4. --timeout
// stays what it is everywhere: the bound on each request to the API.
type waitFlags struct {
	wait    bool
	timeout time.Duration
}

// addWaitFlags registers --wait, by default on for the commands whose
// operations take seconds and off for those that take minutes, and
// --wait-timeout. what names what is waited for.
func addWaitFlags(cmd *cobra.Command, w *waitFlags, waitByDefault bool, what string) {
	cmd.Flags().BoolVar(&w.wait, "wait", waitByDefault, "wait until "+what+", showing progress on a terminal (--wait=false: return once started)")
	cmd.Flags().DurationVar(&w.timeout, "wait-timeout", 0, "with --wait, stop waiting after this long (0: no limit); what was started goes on")
}

// context bounds ctx by --wait-timeout.
func (w waitFlags) context(ctx context.Context) (context.Context, context.CancelFunc) {
	if w.timeout > 0 {
		return context.WithTimeout(ctx, w.timeout)
	}
	return context.WithCancel(ctx)
}

// validate refuses a negative --wait-timeout, and one without --wait.
func (w waitFlags) validate(cmd *cobra.Command) error {
	switch {
	case w.timeout < 0:
		return usageErrorf("--wait-timeout %s must not be negative", w.timeout)
	case w.timeout > 0 && !w.wait && cmd.Flags().Changed("wait"):
		return usageErrorf("--wait-timeout needs --wait")
	}
	return nil
}

// stillRunning is the error of a wait that ended before what it waited
// for: exit status 4, with how to follow it.
func stillRunning(ctx context.Context, what, follow string) error {
	why := "stopped waiting"
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		why = "--wait-timeout passed"
	}
	return withExit(exitStillRunning, fmt.Errorf("%s; %s goes on in the background: follow it with %s", why, what, follow))
}

// apiWait is the wait the command asks the API for in the request that
// starts an operation: none without --wait, else the API's default within
// --timeout and --wait-timeout; the command polls past it.
func (g *globals) apiWait(w waitFlags) *string {
	d := api.DefaultWait
	if !w.wait {
		d = 0
	} else if half := g.timeout / 2; half < d {
		d = half
	}
	if w.wait && w.timeout > 0 && w.timeout < d {
		d = w.timeout
	}
	s := d.String()
	return &s
}

// operationEnded reports whether an operation has reached its end state.
func operationEnded(op api.Operation) bool {
	return op.State != api.OperationStateRunning
}

// waitOperation polls an operation every 500 ms until it ends, showing its
// current step on a terminal, and returns it as it ended. Failed requests
// (a server restarting, a load balancer switching) are retried for up to
// --timeout. ctx ends the wait, never the operation: the error then has
// exit status 4.
func (g *globals) waitOperation(ctx context.Context, c *api.ClientWithResponses, op api.Operation) (api.Operation, error) {
	p := &opProgress{w: g.stderr, tty: isTerminal(g.stderr), start: time.Now()}
	defer p.end()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var failingSince time.Time
	for !operationEnded(op) {
		p.show(op)
		select {
		case <-ctx.Done():
			return op, stillRunning(ctx, fmt.Sprintf("the %s of tenant %s", op.Kind, op.TenantId), "silo operation get "+op.Id)
		case <-tick.C:
		}
		resp, err := c.GetOperationWithResponse(ctx, op.Id)
		if ctx.Err() != nil {
			continue // the select above says so
		}
		if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
			transient := resp == nil || resp.StatusCode() >= 500
			if transient && failingSince.IsZero() {
				failingSince = time.Now()
			}
			if transient && time.Since(failingSince) < g.timeout {
				continue
			}
			return op, fmt.Errorf("%v; the %s of tenant %s may still be running: follow it with silo operation get %s", err, op.Kind, op.TenantId, op.Id)
		}
		failingSince = time.Time{}
		op = *resp.JSON200
	}
	return op, nil
}

// opProgress draws an operation's current step on stderr: a line
// rewritten in place on a terminal, else a line at each new step.
type opProgress struct {
	w     io.Writer
	tty   bool
	start time.Time
	last  string
	shown bool
}

func (p *opProgress) show(op api.Operation) {
	step := "starting"
	if n := len(op.Steps); n > 0 {
		step = op.Steps[n-1].Name
		if a := op.Steps[n-1].Attempts; a > 1 {
			step += fmt.Sprintf(" (attempt %d)", a)
		}
	}
	line := fmt.Sprintf("%s of %s: %s", op.Kind, op.TenantId, step)
	if m := op.Move; m != nil {
		if m.Path != nil {
			line += fmt.Sprintf(" [%s path]", *m.Path)
		}
		if m.CopiedBytes != nil {
			line += ", " + size(*m.CopiedBytes) + " copied"
		}
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r%s  %s\033[K", line, time.Since(p.start).Round(time.Second))
		p.shown = true
		return
	}
	if line != p.last {
		fmt.Fprintln(p.w, line)
	}
	p.last = line
}

func (p *opProgress) end() {
	if p.tty && p.shown {
		fmt.Fprint(p.w, "\r\033[K")
		p.shown = false
	}
}

// finishOperation ends a command that started a tenant operation: with
// --wait, it follows an operation still running (op, the API's 202) to its
// end and prints the tenant as it then is (returned); without, it prints
// the operation and how to follow it. A failed operation is exit status 1.
func (g *globals) finishOperation(ctx context.Context, c *api.ClientWithResponses, w waitFlags, op api.Operation) (*api.Tenant, error) {
	if !w.wait {
		if err := g.printOperation(op); err != nil {
			return nil, err
		}
		fmt.Fprintf(g.stderr, "The %s of tenant %s goes on in the background; follow it with: silo operation get %s\n",
			op.Kind, op.TenantId, op.Id)
		return nil, nil
	}
	wctx, cancel := w.context(ctx)
	defer cancel()
	op, err := g.waitOperation(wctx, c, op)
	if err != nil {
		return nil, err
	}
	if op.State != api.OperationStateSucceeded {
		if err := g.printOperation(op); err != nil {
			return nil, err
		}
		why := deref(op.Error)
		if op.ErrorCode != nil {
			why += " (" + *op.ErrorCode + ")"
		}
		return nil, fmt.Errorf("the %s of tenant %s %s: %s", op.Kind, op.TenantId, op.State, strings.TrimSpace(why))
	}
	resp, err := c.GetTenantWithResponse(ctx, op.TenantId, nil)
	if err := g.check(resp, err, resp != nil && resp.JSON200 != nil); err != nil {
		return nil, err
	}
	return resp.JSON200, g.printTenants([]api.Tenant{*resp.JSON200}, false)
}
