// Package readcache holds committed records for readers, so that a hot
// record is decoded once instead of read from Pebble (and its merge
// operands folded) on every request.
//
// One writer commits new values and then invalidates their keys; any
// number of readers Get and, on a miss, read the committed value and Put
// it. A Put is dropped when any invalidation happened since its Get (the
// value read may predate that commit), so the cache never keeps a value
// older than the newest committed one for longer than the window between
// a commit and its Invalidate.
package readcache

import "sync"

// Cache maps keys to committed values. Values are shared between readers:
// they must not be modified once Put.
type Cache[V any] struct {
	mu  sync.Mutex
	gen uint64
	m   map[string]V
	max int
}

// New returns a cache of at most size entries (at least 1).
func New[V any](size int) *Cache[V] {
	return &Cache[V]{m: make(map[string]V), max: max(1, size)}
}

// Get returns the value cached for key and true, or the generation to
// pass to Put with the value read from the store.
func (c *Cache[V]) Get(key string) (v V, ok bool, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok = c.m[key]
	return v, ok, c.gen
}

// Put caches v for key unless an invalidation happened since the Get
// that returned gen. A full cache first drops about an eighth of its
// entries (in the map's random order).
func (c *Cache[V]) Put(key string, v V, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if _, ok := c.m[key]; !ok && len(c.m) >= c.max {
		drop := max(1, c.max/8)
		for k := range c.m {
			delete(c.m, k)
			if drop--; drop == 0 {
				break
			}
		}
	}
	c.m[key] = v
}

// Invalidate drops keys. The writer calls it once their new values (or
// their deletion) are committed.
func (c *Cache[V]) Invalidate(keys ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for _, k := range keys {
		delete(c.m, k)
	}
}

// Clear drops every entry.
func (c *Cache[V]) Clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	clear(c.m)
}

// Len returns the number of entries.
func (c *Cache[V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
