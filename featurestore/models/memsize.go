package models

import (
	"unsafe"

	"github.com/streamrec/recsys/featurestore"
)

// Sizes of the model records in memory, for the caches' byte bounds
// (Options.CacheBytes): the struct, the slices' capacity and the
// strings' bytes.

func (u *User) memSize() int64 {
	if u == nil {
		return 0 // cached absence
	}
	n := int64(unsafe.Sizeof(*u)) + int64(cap(u.History))*int64(unsafe.Sizeof(Interaction{})) + 4*int64(cap(u.Vec))
	for i := range u.History {
		n += int64(len(u.History[i].Item))
	}
	return n
}

func (it *Item) memSize() int64 {
	if it == nil {
		return 0 // cached absence
	}
	return int64(unsafe.Sizeof(*it)) + 4*int64(cap(it.Vec)) + featurestore.RecentsBytes(it.Users)
}

func (r *pairRecord) memSize() int64 {
	if r == nil {
		return 0 // cached absence
	}
	return int64(unsafe.Sizeof(*r)) + 4*int64(cap(r.P)) + 8*int64(cap(r.C)+cap(r.M)) + int64(cap(r.ch))
}

// neighborMapEntry is about what an entry of neighborRecord.index costs.
const neighborMapEntry = 40

func (r *neighborRecord) memSize() int64 {
	if r == nil {
		return 0 // cached absence
	}
	n := int64(unsafe.Sizeof(*r)) + int64(cap(r.List))*int64(unsafe.Sizeof(neighbor{}))
	for i := range r.List {
		n += int64(len(r.List[i].ID))
	}
	// The index and the similarities of one decay reference, both built
	// once read (readNeighbors builds the index before the Put).
	return n + int64(len(r.List))*(neighborMapEntry+8)
}
