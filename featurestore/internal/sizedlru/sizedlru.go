// Package sizedlru is a least-recently-used cache bounded by its number
// of entries and, optionally, by the bytes its values hold: the writer's
// caches of decoded records, whose values grow in place as events arrive
// (a neighbour list filling towards its cap), under --state.memory-limit.
//
// A value's size is taken when it is added. The writer adds every record
// its batch changed again once the batch is committed, so a record that
// grew is weighed again then; between two adds the cache's bytes can lag
// the values' by what one batch added.
package sizedlru

import (
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// EntryOverhead is what an entry costs beyond its value's own bytes: the
// list element, the map slot and the key's header, about.
const EntryOverhead = 96

// Cache is safe for concurrent use.
type Cache[K comparable, V any] struct {
	mu       sync.Mutex
	lru      *simplelru.LRU[K, entry[V]]
	size     func(V) int64
	bytes    int64
	maxBytes int64
	// hits and misses count Get's answers (Peek is not counted).
	hits, misses int64
}

type entry[V any] struct {
	v V
	n int64
}

// New returns a cache of at most entries entries (at least 1). With
// maxBytes > 0 it also keeps the bytes of its values, as size reports
// them plus EntryOverhead each, at most maxBytes, evicting the least
// recently used entries past it (it always keeps the newest one). With
// maxBytes ≤ 0 size is never called.
func New[K comparable, V any](entries int, maxBytes int64, size func(V) int64) *Cache[K, V] {
	c := &Cache[K, V]{size: size, maxBytes: maxBytes}
	c.lru, _ = simplelru.NewLRU(max(1, entries), func(_ K, e entry[V]) { c.bytes -= e.n })
	return c
}

// Get returns key's value and marks it most recently used.
func (c *Cache[K, V]) Get(key K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Get(key)
	if ok {
		c.hits++
	} else {
		c.misses++
	}
	return e.v, ok
}

// Lookups returns how many Gets found their key and how many did not.
func (c *Cache[K, V]) Lookups() (hits, misses int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.misses
}

// Peek returns key's value without marking it used.
func (c *Cache[K, V]) Peek(key K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Peek(key)
	return e.v, ok
}

// Add sets key's value (weighing it again when the key is present) and
// marks it most recently used, then evicts past the bounds.
func (c *Cache[K, V]) Add(key K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	if c.maxBytes > 0 {
		n = c.size(v) + EntryOverhead
		if old, ok := c.lru.Peek(key); ok {
			c.bytes -= old.n // simplelru replaces a value without its eviction callback
		}
	}
	c.bytes += n
	c.lru.Add(key, entry[V]{v: v, n: n})
	for c.maxBytes > 0 && c.bytes > c.maxBytes && c.lru.Len() > 1 {
		c.lru.RemoveOldest()
	}
}

// Remove drops key.
func (c *Cache[K, V]) Remove(key K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Remove(key)
}

// Purge drops every entry.
func (c *Cache[K, V]) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Purge()
	c.bytes = 0
}

// Keys returns the keys, least recently used first.
func (c *Cache[K, V]) Keys() []K {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Keys()
}

// Len returns the number of entries.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Bytes returns the bytes the entries hold by their sizes when added (0
// without a byte bound).
func (c *Cache[K, V]) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}
