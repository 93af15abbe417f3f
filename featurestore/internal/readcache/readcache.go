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
	m   map[string]entry[V]
	max int
	// With maxBytes > 0, the values' bytes (by size, plus EntryOverhead
	// each) are kept at most maxBytes.
	maxBytes, bytes int64
	size            func(V) int64
	// hits and misses count Get's answers.
	hits, misses int64
}

type entry[V any] struct {
	v V
	n int64
}

// EntryOverhead is what an entry costs beyond its value's bytes (the map
// slot, the key), about.
const EntryOverhead = 64

// New returns a cache of at most size entries (at least 1).
func New[V any](size int) *Cache[V] {
	return NewSized[V](size, 0, nil)
}

// NewSized is New with a bound on bytes too: with maxBytes > 0 the
// values, as size weighs them, hold at most maxBytes.
func NewSized[V any](size int, maxBytes int64, sizeOf func(V) int64) *Cache[V] {
	return &Cache[V]{m: make(map[string]entry[V]), max: max(1, size), maxBytes: maxBytes, size: sizeOf}
}

// Get returns the value cached for key and true, or the generation to
// pass to Put with the value read from the store.
func (c *Cache[V]) Get(key string) (v V, ok bool, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if ok {
		c.hits++
	} else {
		c.misses++
	}
	return e.v, ok, c.gen
}

// Lookups returns how many Gets found their key and how many did not.
func (c *Cache[V]) Lookups() (hits, misses int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.misses
}

// Put caches v for key unless an invalidation happened since the Get
// that returned gen. A full cache first drops about an eighth of its
// entries (in the map's random order), and one past its bytes drops
// entries in the same order until the new value fits.
func (c *Cache[V]) Put(key string, v V, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	var n int64
	if c.maxBytes > 0 {
		n = c.size(v) + EntryOverhead
	}
	old, had := c.m[key]
	if had {
		c.bytes -= old.n
		delete(c.m, key)
	} else if len(c.m) >= c.max {
		drop := max(1, c.max/8)
		for k, e := range c.m {
			c.bytes -= e.n
			delete(c.m, k)
			if drop--; drop == 0 {
				break
			}
		}
	}
	if c.maxBytes > 0 && c.bytes+n > c.maxBytes {
		for k, e := range c.m {
			c.bytes -= e.n
			delete(c.m, k)
			if c.bytes+n <= c.maxBytes {
				break
			}
		}
	}
	c.m[key] = entry[V]{v: v, n: n}
	c.bytes += n
}

// Cached reports whether key is cached now. The writer asks it before a
// commit, to make the new values of the cached keys it changes (a reader
// will want them again) for Replace.
func (c *Cache[V]) Cached(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[key]
	return ok
}

// Replace is Invalidate of keys, except that the keys of fresh that are
// still cached take their new values from it instead of being dropped:
// readers find the committed value of a hot record without reading it
// again. The writer calls it once the values are committed, when no
// reader may read an older one (under the store's publication).
func (c *Cache[V]) Replace(keys []string, fresh map[string]V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for _, k := range keys {
		e, ok := c.m[k]
		if !ok {
			continue
		}
		c.bytes -= e.n
		v, ok := fresh[k]
		if !ok {
			delete(c.m, k)
			continue
		}
		var n int64
		if c.maxBytes > 0 {
			n = c.size(v) + EntryOverhead
		}
		c.m[k] = entry[V]{v: v, n: n}
		c.bytes += n
	}
	// New values may be larger: drop entries (in the map's random order)
	// until the cache is within its bytes again.
	if c.maxBytes > 0 {
		for k, e := range c.m {
			if c.bytes <= c.maxBytes {
				break
			}
			c.bytes -= e.n
			delete(c.m, k)
		}
	}
}

// Invalidate drops keys. The writer calls it once their new values (or
// their deletion) are committed.
func (c *Cache[V]) Invalidate(keys ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for _, k := range keys {
		if e, ok := c.m[k]; ok {
			c.bytes -= e.n
			delete(c.m, k)
		}
	}
}

// Clear drops every entry.
func (c *Cache[V]) Clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	clear(c.m)
	c.bytes = 0
}

// Bytes returns the bytes of the entries by their sizes (0 without a
// byte bound).
func (c *Cache[V]) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// Keys returns the cached keys, in no order.
func (c *Cache[V]) Keys() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]string, 0, len(c.m))
	for k := range c.m {
		keys = append(keys, k)
	}
	return keys
}

// Len returns the number of entries.
func (c *Cache[V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
