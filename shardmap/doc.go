// Package shardmap is Silo's tenant directory and shard registry: the
// catalog database's Go API.
//
// A Store reads and writes shards, tenants and the audit log. Every mutation
// writes its audit entry in the same transaction when it succeeds, and a
// failure entry when it does not, so the audit log is the complete record of
// who asked for what. Lists are paged with opaque keyset cursors.
//
// Shard DSNs, like tenant passwords, are kept sealed in the catalog (Sealer)
// and opened only for Silo's own connections; they are redacted
// (silo.RedactDSN) wherever they are shown or logged.
package shardmap
