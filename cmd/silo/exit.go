package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// The exit statuses of every silo command (README, "Exit statuses").
const (
	exitOK = 0
	// exitFailed: the command failed (the API refused it, or the operation
	// it waited for failed).
	exitFailed = 1
	// exitUsage: bad flags or arguments, or an unknown command; nothing was
	// sent.
	exitUsage = 2
	// exitPartial: finished with failures: a migration run with failed
	// tenants, a rebalance whose moves did not all succeed, a drain that
	// left tenants behind.
	exitPartial = 3
	// exitStillRunning: the wait ended (--wait-timeout, Ctrl-C) before the
	// operation did, which goes on.
	exitStillRunning = 4
)

// exitError is an error with the status the command exits with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// withExit gives err the exit status code; nil stays nil.
func withExit(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// usageErrorf is a mistake in the command line: exit status 2.
func usageErrorf(format string, a ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, a...)}
}

// exitCode is the status the command exits with after err.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	if e, ok := errors.AsType[*exitError](err); ok {
		return e.code
	}
	// Cobra's own checks of required flags and flag groups, which run
	// before any hook of ours and return plain errors.
	msg := err.Error()
	if strings.HasPrefix(msg, "required flag") || strings.HasPrefix(msg, "if any flags in the group") ||
		strings.HasPrefix(msg, "at least one of the flags") || strings.HasPrefix(msg, "unknown command") {
		return exitUsage
	}
	return exitFailed
}

// strictUsage makes every mistake in a command line an error of exit
// status 2 in the command tree under root: a flag that does not parse,
// arguments a command does not take, and an unknown subcommand, which
// cobra answers with the parent's help and status 0 otherwise (`silo
// tenant frob` looked like a success).
func strictUsage(root *cobra.Command) {
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageErrorf("%v (see %s --help)", err, c.CommandPath())
	})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		switch {
		case c.HasSubCommands() && c.Run == nil && c.RunE == nil:
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(c *cobra.Command, args []string) error {
				if len(args) > 0 {
					return usageErrorf("unknown command %q for %q (see %s --help)", args[0], c.CommandPath(), c.CommandPath())
				}
				return c.Help()
			}
		case c.Args != nil:
			args := c.Args
			c.Args = func(c *cobra.Command, a []string) error {
				if err := args(c, a); err != nil {
					return usageErrorf("%v (see %s --help)", err, c.CommandPath())
				}
				return nil
			}
		}
		// pflag's notes (a deprecated flag's) go to stderr, not into
		// output a script reads.
		c.Flags().SetOutput(c.ErrOrStderr())
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}
