// Package migrations holds Silo's embedded SQL migrations and applies them.
//
// The catalog's schema lives in catalog/*.sql; ApplyCatalog brings a catalog
// database up to date under a PostgreSQL session lock, so several `silo
// serve` processes starting together apply each migration once.
package migrations
