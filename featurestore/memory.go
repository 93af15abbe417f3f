package featurestore

import (
	"fmt"
	"unsafe"
)

// MemoryBudget is how a process memory limit (serve's
// --state.memory-limit) is shared out between the parts of the state
// that hold memory. Past their shares the record caches evict their
// least recently used records, which are in Pebble already (every batch
// writes what it changed) and are read back when next needed.
type MemoryBudget struct {
	// Limit is the whole.
	Limit int64
	// PebbleCache is Pebble's block cache and MemTable each of its up to
	// memTables memtables: Pebble's own memory, outside the Go heap.
	PebbleCache, MemTable int64
	// GoHeap is the rest, the Go heap's share. GoLimit is the Go
	// runtime's soft memory limit to set (debug.SetMemoryLimit): the
	// garbage collector works harder as the heap nears it, instead of
	// letting it grow to twice what is live. It is GoHeap when Pebble's
	// memory is outside the Go heap (built with cgo, as by default), the
	// whole Limit when it is inside.
	GoHeap, GoLimit int64
	// WindowState bounds the materialized window state of online reads.
	WindowState int64
	// StoreRecords bounds the store's caches of decoded records (the
	// writer's users and items, the readers' items), ModelRecords the
	// models' (models.Options.CacheBytes).
	StoreRecords, ModelRecords int64
}

// MinMemoryLimit is the smallest memory limit SplitMemory accepts.
const MinMemoryLimit = 256 << 20

// SplitMemory shares limit bytes out: Pebble's memtables a thirty-second
// of it (8–128 MiB each) and its block cache an eighth (16–256 MiB); of
// the Go heap's remainder, a sixth each to the window state and the
// models' record caches and an eighth to the store's. The rest (more
// than half of the heap) is for what is not cached: dedup filters, the
// apply batch, indexes, requests, and the collector's headroom.
func SplitMemory(limit int64) (MemoryBudget, error) {
	if limit < MinMemoryLimit {
		return MemoryBudget{}, fmt.Errorf("memory limit %.1f MiB is less than the %d MiB the state needs at least", float64(limit)/(1<<20), MinMemoryLimit>>20)
	}
	b := MemoryBudget{Limit: limit}
	b.MemTable = min(max(limit/32, 8<<20), memTableSize)
	b.PebbleCache = min(max(limit/8, 16<<20), 256<<20)
	b.GoHeap = limit - b.PebbleCache - memTables*b.MemTable
	b.GoLimit = b.GoHeap
	if !pebbleOutsideHeap {
		b.GoLimit = limit
	}
	b.WindowState = b.GoHeap / 6
	b.ModelRecords = b.GoHeap / 6
	b.StoreRecords = b.GoHeap / 8
	return b, nil
}

// apply sets o's memory options from the budget: Pebble's, the window
// state's (no larger than o asks for; off stays off) and the record
// caches'.
func (b MemoryBudget) apply(o *Options) {
	o.CacheBytes = b.PebbleCache
	o.memTableSize = b.MemTable
	if o.WindowCacheBytes >= 0 {
		if o.WindowCacheBytes == 0 {
			o.WindowCacheBytes = b.WindowState
		}
		o.WindowCacheBytes = min(o.WindowCacheBytes, b.WindowState)
	}
	o.RecordCacheBytes = b.StoreRecords
}

// Sizes of the records in memory, for the caches' byte bounds: the
// struct, the slices' capacity and the strings' bytes (shared strings
// counted once per record that holds them: an upper bound).

const recentBytes = int64(unsafe.Sizeof(Recent{}))

// RecentsBytes is the memory of a list of Recent.
func RecentsBytes(list []Recent) int64 {
	n := int64(cap(list)) * recentBytes
	for i := range list {
		n += int64(len(list[i].ID))
	}
	return n
}

func (u *UserRecord) memSize() int64 {
	if u == nil {
		return 0 // cached absence
	}
	return int64(unsafe.Sizeof(*u)) + RecentsBytes(u.RecentItems) + RecentsBytes(u.RecentCategories) + RecentsBytes(u.Affinities)
}

func (r *ItemRecord) memSize() int64 {
	if r == nil {
		return 0 // cached absence
	}
	return int64(unsafe.Sizeof(*r)) + int64(len(r.CategoryID))
}

// CacheStat is what one record cache holds: its entries and, under a
// memory limit (Options.MemoryLimit), their bytes as the cache weighs
// them (0 without a limit: the caches are bounded by entries alone then,
// and nothing is weighed).
type CacheStat struct {
	Name    string
	Entries int
	Bytes   int64
	// Hits and Misses count the lookups that found their record in the
	// cache and those that read it from Pebble (or created it), since the
	// store opened.
	Hits, Misses int64
}

// NewCacheStat describes cache c under name.
func NewCacheStat(name string, c interface {
	Len() int
	Bytes() int64
	Lookups() (hits, misses int64)
}) CacheStat {
	h, m := c.Lookups()
	return CacheStat{Name: name, Entries: c.Len(), Bytes: c.Bytes(), Hits: h, Misses: m}
}

// CacheStats returns the store's record caches: the writer's users and
// items, and the readers' items.
func (s *Store) CacheStats() []CacheStat {
	return []CacheStat{
		NewCacheStat("store_users", s.users),
		NewCacheStat("store_items", s.items),
		NewCacheStat("store_item_reads", s.itemReads),
	}
}
