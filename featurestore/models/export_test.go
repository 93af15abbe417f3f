package models

import (
	"bytes"
	"fmt"
	"math"
	"slices"

	"github.com/streamrec/recsys/featurestore/internal/readcache"
)

// What the external tests (package models_test) need of the models'
// internals.

// NumRankFeatures is the number of the ranker's features.
const NumRankFeatures = numRankFeatures

// StoredPairs is the number of pairs in item id's committed neighbour
// record (up to 1.5 × Neighbors, more than Neighbors exposes).
func (m *Models) StoredPairs(id string) (int, error) {
	r, err := m.readNeighbors(m.st, id)
	if err != nil {
		return 0, err
	}
	return len(r.List), nil
}

// CheckWriterRecords compares every neighbour record the writer caches in
// its own form with the committed record a reader decodes, and returns
// how many it compared.
func (m *Models) CheckWriterRecords() (int, error) {
	items := m.neighbors.Keys()
	for _, id := range items {
		w, _ := m.neighbors.Peek(id)
		got, err := m.readNeighbors(m.st, id)
		if err != nil {
			return 0, err
		}
		if got.LogMass != w.LogMass || len(got.List) != len(w.P) {
			return 0, fmt.Errorf("item %s: stored mass %v with %d pairs, writer %v with %d", id, got.LogMass, len(got.List), w.LogMass, len(w.P))
		}
		for i, p := range got.List {
			if p.ID != m.names[w.P[i]] || p.LogC != w.C[i] || p.LogMass != w.M[i] {
				return 0, fmt.Errorf("item %s pair %d: stored %+v, writer %s %v %v", id, i, p, m.names[w.P[i]], w.C[i], w.M[i])
			}
		}
	}
	return len(items), nil
}

// SetVecs puts items ids (Seqs from the table's end on) with their
// factors vecs (Dim each) into the factor table, as Commit does, without
// starting an index build.
func (m *Models) SetVecs(ids []string, vecs []float32) {
	d := m.opts.Dim
	m.table.Lock()
	defer m.table.Unlock()
	seq := int64(len(m.table.ids))
	for i, id := range ids {
		m.setVecLocked(id, seq+int64(i), vecs[i*d:(i+1)*d])
	}
}

// BuildMFIndex builds the MF index of the table now, in the caller's
// goroutine, and returns its size in bytes (0: none was published).
func (m *Models) BuildMFIndex() int {
	m.buildMFIndex()
	if x := m.mf.index.Load(); x != nil {
		return x.bytes()
	}
	return 0
}

// MFIndexed is how many items the current MF index holds (0: none).
func (m *Models) MFIndexed() int {
	if x := m.mf.index.Load(); x != nil {
		return x.items
	}
	return 0
}

// SetMFBuildHook makes background builds of the MF index call f once
// they have copied the table.
func (m *Models) SetMFBuildHook(f func()) { m.mf.buildHook = f }

// WaitMFBuild waits for a background build of the MF index, if one runs.
func (m *Models) WaitMFBuild() { m.mf.wg.Wait() }

// CachedNeighbors returns how many neighbour records the writer caches.
func (m *Models) CachedNeighbors() int { return m.neighbors.Len() }

// CheckReaderCaches compares every record the readers' caches hold (user
// and item models, neighbour records) with the committed one decoded from
// the store, and returns how many it compared.
func (m *Models) CheckReaderCaches() (int, error) {
	n, err := checkCached(m.userReads, "user", func(id string) (*User, bool, error) { return m.readUser(m.st, id) })
	if err != nil {
		return n, err
	}
	k, err := checkCached(m.itemReads, "item", func(id string) (*Item, bool, error) { return m.readItem(m.st, id) })
	if n += k; err != nil {
		return n, err
	}
	for _, id := range m.reads.Keys() {
		n++
		c, _, _ := m.reads.Get(id)
		want := &neighborRecord{LogMass: math.Inf(-1)}
		if _, err := readModel(m.st, neighborKey(id), "neighbours of", id, want); err != nil {
			return n, err
		}
		if c.LogMass != want.LogMass || !slices.Equal(c.List, want.List) {
			return n, fmt.Errorf("neighbours of %s: cached %v %v, committed %v %v", id, c.LogMass, c.List, want.LogMass, want.List)
		}
		for i, p := range c.List {
			if c.find(p.ID) != i {
				return n, fmt.Errorf("neighbours of %s: the index finds %s at %d, not %d", id, p.ID, c.find(p.ID), i)
			}
		}
	}
	return n, nil
}

// ReaderLookups returns the hits and misses of the readers' caches of
// user and item models and of neighbour records, summed.
func (m *Models) ReaderLookups() (hits, misses int64) {
	for _, st := range m.CacheStats() {
		switch st.Name {
		case "model_user_reads", "model_item_reads", "model_neighbor_reads":
			hits, misses = hits+st.Hits, misses+st.Misses
		}
	}
	return hits, misses
}

// checkCached compares every record of readers' cache c (nil: cached
// absence) with the committed one read, by their encodings.
func checkCached[T interface {
	comparable
	appendTo([]byte) []byte
}](c *readcache.Cache[T], what string, read func(string) (T, bool, error)) (int, error) {
	n := 0
	for _, id := range c.Keys() {
		n++
		v, _, _ := c.Get(id)
		want, found, err := read(id)
		if err != nil {
			return n, err
		}
		var none T
		cached := v != none
		if cached != found || cached && !bytes.Equal(v.appendTo(nil), want.appendTo(nil)) {
			return n, fmt.Errorf("%s %s: cached %+v, committed %+v (found %v)", what, id, v, want, found)
		}
	}
	return n, nil
}
