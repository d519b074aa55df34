package shardmap

import (
	"testing"
	"time"
)

// SetRepairBounds changes the login repair bounds for one test (which
// must not run in parallel with others that repair logins).
func SetRepairBounds(t *testing.T, every time.Duration, most int, window, block time.Duration) {
	e, m, w, b := repairEvery, maxRepairs, repairWindow, blockFor
	repairEvery, maxRepairs, repairWindow, blockFor = every, most, window, block
	t.Cleanup(func() { repairEvery, maxRepairs, repairWindow, blockFor = e, m, w, b })
}
