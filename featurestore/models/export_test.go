package models

import "fmt"

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
