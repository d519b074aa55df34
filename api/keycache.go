package api

import (
	"context"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/silo-db/silo/shardmap"
)

// keyCacheSize bounds the key checks a server remembers: about 150 bytes
// each.
const keyCacheSize = 100000

// keyCache remembers the tenant keys the catalog accepted, each for the
// server's key cache lifetime from its check, so that the data API checks
// a key without the catalog on most calls and goes on serving tenants
// while the catalog is down. A key revoked through another server stops
// working here within that lifetime; one revoked through this server, at
// once (forget). Entries are keyed by the SHA-256 of the token, never the
// token, and hold no secret. It is safe for concurrent use.
type keyCache struct {
	ttl time.Duration
	lru *lru.Cache[[32]byte, keyCheck]

	// mu orders puts and forgets: gen grows on every forget, and a check
	// that began before one is not remembered, since it may have read the
	// key before its revocation.
	mu  sync.Mutex
	gen uint64
}

// keyCheck is a key the catalog accepted, until expires.
type keyCheck struct {
	keyID, tenantID string
	expires         time.Time
}

func newKeyCache(ttl time.Duration) (*keyCache, error) {
	c, err := lru.New[[32]byte, keyCheck](keyCacheSize)
	if err != nil {
		return nil, err
	}
	return &keyCache{ttl: ttl, lru: c}, nil
}

// get returns the check of the token whose SHA-256 is hash, if it is
// remembered and not expired.
func (k *keyCache) get(hash [32]byte) (keyCheck, bool) {
	kc, ok := k.lru.Get(hash)
	if !ok {
		return keyCheck{}, false
	}
	if time.Now().After(kc.expires) {
		k.lru.Remove(hash)
		return keyCheck{}, false
	}
	return kc, true
}

// generation is read before a check with the catalog, and given to put.
func (k *keyCache) generation() uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.gen
}

// put remembers a key the catalog accepted, in a check that began at
// generation gen, unless a key was forgotten since.
func (k *keyCache) put(hash [32]byte, key *shardmap.TenantKey, gen uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.gen != gen {
		return
	}
	k.lru.Add(hash, keyCheck{keyID: key.ID, tenantID: key.TenantID, expires: time.Now().Add(k.ttl)})
}

// forget drops key id's checks: it was revoked through this server.
func (k *keyCache) forget(id string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.gen++
	for _, hash := range k.lru.Keys() {
		if kc, ok := k.lru.Peek(hash); ok && kc.keyID == id {
			k.lru.Remove(hash)
		}
	}
}

// authenticateKey checks a tenant key, whose token's SHA-256 is hash: from
// the cache, or with the catalog, within its own bound (it runs before the
// request timeout does) and, while the catalog is down, not at all: it
// returns EUNAVAILABLE at once then.
func (s *Server) authenticateKey(ctx context.Context, hash [32]byte, token string) (keyCheck, error) {
	if kc, ok := s.keys.get(hash); ok {
		s.keyChecks.WithLabelValues("cache").Inc()
		return kc, nil
	}
	s.keyChecks.WithLabelValues("catalog").Inc()
	gen := s.keys.generation()
	ctx, cancel := context.WithTimeout(ctx, min(s.requestTimeout, 10*time.Second))
	defer cancel()
	if s.health != nil {
		gctx, gcancel, err := s.health.Guard(ctx)
		if err != nil {
			return keyCheck{}, err
		}
		defer gcancel()
		ctx = gctx
	}
	key, err := s.catalog.AuthenticateKey(ctx, token)
	if err != nil {
		if cause := shardmap.GuardCause(ctx); cause != nil {
			return keyCheck{}, cause // the catalog went down meanwhile
		}
		return keyCheck{}, err
	}
	s.keys.put(hash, key, gen)
	return keyCheck{keyID: key.ID, tenantID: key.TenantID}, nil
}
