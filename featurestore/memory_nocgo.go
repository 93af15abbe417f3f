//go:build !cgo

package featurestore

// pebbleOutsideHeap: without cgo, Pebble's block cache and memtables are
// Go slices (internal/manual), inside the Go heap.
const pebbleOutsideHeap = false
