//go:build cgo

package featurestore

// pebbleOutsideHeap: with cgo, Pebble allocates its block cache and
// memtables with C's allocator (internal/manual), outside the Go heap.
const pebbleOutsideHeap = true
