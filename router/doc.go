// Package router sends every query to the tenant's own database on the right
// shard, with a fixed connection budget per shard however many tenants there
// are.
//
// It is built by the router issue; until then it holds no code.
package router
