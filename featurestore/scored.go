package featurestore

import (
	"cmp"
	"container/heap"
	"slices"
	"strings"
)

// Scored is an item with a score.
type Scored struct {
	ItemID string
	Score  float64
}

// SortScored orders list best first: by descending score, ties by id.
func SortScored(list []Scored) {
	slices.SortFunc(list, func(a, b Scored) int {
		if a.Score != b.Score {
			return cmp.Compare(b.Score, a.Score)
		}
		return strings.Compare(a.ItemID, b.ItemID)
	})
}

// TopK keeps the k best of the items offered to it (ties: the smaller id),
// in a heap of k rather than a sorted list of everything.
type TopK struct {
	k int
	h scoredHeap
}

// NewTopK returns a TopK that keeps k items.
func NewTopK(k int) *TopK { return &TopK{k: k, h: make(scoredHeap, 0, k+1)} }

// Offer keeps c if it is among the k best offered so far.
func (t *TopK) Offer(c Scored) {
	h := &t.h
	if len(*h) < t.k {
		heap.Push(h, c)
	} else if top := (*h)[0]; c.Score > top.Score || (c.Score == top.Score && c.ItemID < top.ItemID) {
		(*h)[0] = c
		heap.Fix(h, 0)
	}
}

// Floor returns the lowest score t keeps once it holds k items: an item
// scored below it would not be kept. ok is false while t has room.
func (t *TopK) Floor() (score float64, ok bool) {
	if len(t.h) < t.k {
		return 0, false
	}
	return t.h[0].Score, true
}

// Best returns what t kept, best first (as SortScored orders).
func (t *TopK) Best() []Scored {
	out := []Scored(t.h)
	SortScored(out)
	return out
}

// scoredHeap is a min-heap by score (ties: larger id first out).
type scoredHeap []Scored

func (h scoredHeap) Len() int { return len(h) }
func (h scoredHeap) Less(i, j int) bool {
	if h[i].Score != h[j].Score {
		return h[i].Score < h[j].Score
	}
	return h[i].ItemID > h[j].ItemID
}
func (h scoredHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *scoredHeap) Push(x any)   { *h = append(*h, x.(Scored)) }
func (h *scoredHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// TopScored returns the k best entries of list with a positive score, best
// first (ties by id).
func TopScored(list []Scored, k int) []Scored {
	if k <= 0 {
		return nil
	}
	t := NewTopK(k)
	for _, c := range list {
		if c.Score > 0 {
			t.Offer(c)
		}
	}
	return t.Best()
}
