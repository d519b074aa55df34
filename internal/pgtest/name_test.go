package pgtest

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDatabaseName(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ in, want string }{
		{"TestMove/to_full_shard#01", "testmove_to_full_shard_01_7"},
		{"Test Ünïcode--and  spaces", "test_n_code_and_spaces_7"},
		{"///", "test_7"},
		{strings.Repeat("TestLong", 20), strings.Repeat("testlong", 5) + "_7"},
	} {
		got := databaseName(tt.in, 7)
		require.Equal(t, tt.want, got, tt.in)
		require.LessOrEqual(t, len(got), 63)
	}
}
