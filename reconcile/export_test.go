package reconcile

import "context"

// RepairFinding repairs one finding as Repair would once a new check has
// confirmed it: with the catalog's last word (Claimants) and the audit.
// Tests use it to show that the last word holds on its own.
func (c *Checker) RepairFinding(ctx context.Context, f Finding) Repair { return c.repair(ctx, f) }
