package reconcile

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Only the names Silo gives are Silo's: anything else on a shard is never
// reported, and never dropped.
func TestCheckNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cls  class
		base string
	}{
		{"t_su44ngvdi6qehanevpd3", tenant, "t_su44ngvdi6qehanevpd3"},
		{"t_acme_corp", tenant, "t_acme_corp"}, // an older tenant's t_<id>
		{"silo_template", template, ""},
		{"silo_owner", template, ""},
		{"silo_warm_ab2cd3ef4gh5ij6k", warm, ""},
		{"silo_moved_1a2b3c4d_t_su44ngvdi6qehanevpd3", retired, ""},
		{"silo_check_0a1b2c3d4e5f", scratch, ""},
		{"silo_sub_t_su44ngvdi6qehanevpd3", subRole, "t_su44ngvdi6qehanevpd3"},
		// Not Silo's.
		{"postgres", notSilo, ""},
		{"silo", notSilo, ""},
		{"template1", notSilo, ""},
		{"t_Acme", notSilo, ""},
		{"t_", notSilo, ""},
		{"tenant_db", notSilo, ""},
		{"silo_warm_", notSilo, ""},
		{"silo_sub_acme", notSilo, ""},
		{"silo_move_t_x", notSilo, ""}, // a slot's or subscription's name, not a database's
		{"silo_check_xyz", notSilo, ""},
		{"t_" + strings.Repeat("a", 62), notSilo, ""},
	} {
		cls, base := classify(tc.name)
		require.Equal(t, tc.cls, cls, tc.name)
		require.Equal(t, tc.base, base, tc.name)
	}
	require.Equal(t, "t_su44ngvdi6qehanevpd3", moveObject("silo_move_t_su44ngvdi6qehanevpd3"))
	for _, name := range []string{"silo_move", "silo_moved_1a2b3c4d_t_x", "silo_move_acme", "my_slot", "silo_move_t_X"} {
		require.Empty(t, moveObject(name), name)
	}
}
