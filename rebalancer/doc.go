// Package rebalancer moves tenants between shards and plans the moves
// that even out a fleet.
//
// A move (Rebalancer.Move) is a durable operation of the engine (kind
// move, pivot "cutover"): the tenant's database is copied to another
// shard of its region while it serves, by logical replication or, where
// that cannot run safely, by a copy while it is paused; a short cutover
// switches it, and its old database is retired. What a move needs of the
// tenant lifecycle (roles, databases, logins, the schema's dump) it asks
// of the provisioner (the Provisioner interface); every connection comes
// from the shared shardmap.Dialer.
//
// Plan, Apply and Drain decide which tenants move where: from the
// catalog, the shards' database sizes, regions and weights.
package rebalancer
