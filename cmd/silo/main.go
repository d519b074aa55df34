// Command silo is Silo's server and operator CLI.
//
// `silo serve` runs the control plane, `silo dev` runs it with local
// PostgreSQL clusters, and the other commands are clients of the HTTP API.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "silo: "+oneLine(err.Error()))
		os.Exit(exitCode(err))
	}
}
