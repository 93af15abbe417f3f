package sizedlru

import (
	"math/rand/v2"
	"testing"
)

func TestBytesBound(t *testing.T) {
	size := func(v []byte) int64 { return int64(len(v)) }
	c := New[int](1000, 10*(100+EntryOverhead), size)
	for i := range 20 {
		c.Add(i, make([]byte, 100))
	}
	if c.Len() != 10 || c.Bytes() != 10*(100+EntryOverhead) {
		t.Fatalf("len %d bytes %d, want 10 entries of %d", c.Len(), c.Bytes(), 100+EntryOverhead)
	}
	for i := range 10 {
		if _, ok := c.Peek(i); ok {
			t.Fatalf("%d: the oldest entries stay", i)
		}
	}
	// A value that grew is weighed again when added again: the least
	// recently used make room for it.
	if _, ok := c.Get(10); !ok {
		t.Fatal("10 is gone")
	}
	c.Add(19, make([]byte, 400))
	if _, ok := c.Peek(10); !ok {
		t.Fatal("10 was used last but one: it stays")
	}
	if c.Bytes() > 10*(100+EntryOverhead) {
		t.Fatalf("bytes %d past the bound", c.Bytes())
	}
	// One value larger than the whole bound is kept alone.
	c.Add(99, make([]byte, 5000))
	if c.Len() != 1 {
		t.Fatalf("len %d, want the newest alone", c.Len())
	}
	c.Remove(99)
	if c.Len() != 0 || c.Bytes() != 0 {
		t.Fatalf("after Remove: len %d bytes %d", c.Len(), c.Bytes())
	}
}

// TestBytesAccount checks the running byte count against the entries'
// sizes after random adds, replacements, removes and purges, with both
// bounds in play.
func TestBytesAccount(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	size := func(v []byte) int64 { return int64(len(v)) }
	c := New[int](50, 20_000, size)
	for step := range 20_000 {
		k := rng.IntN(200)
		switch r := rng.IntN(100); {
		case r < 80:
			c.Add(k, make([]byte, rng.IntN(1000)))
		case r < 95:
			c.Get(k)
		case r < 99:
			c.Remove(k)
		default:
			c.Purge()
		}
		var sum int64
		for _, k := range c.lru.Keys() {
			e, _ := c.lru.Peek(k)
			sum += int64(len(e.v)) + EntryOverhead
		}
		if sum != c.Bytes() || c.Len() > 50 || (c.Len() > 1 && sum > 20_000) {
			t.Fatalf("step %d: bytes %d, entries sum to %d in %d entries", step, c.Bytes(), sum, c.Len())
		}
	}
}

func TestNoByteBound(t *testing.T) {
	c := New[int](3, 0, func([]byte) int64 { panic("size called without a byte bound") })
	for i := range 5 {
		c.Add(i, nil)
	}
	if c.Len() != 3 || c.Bytes() != 0 {
		t.Fatalf("len %d bytes %d", c.Len(), c.Bytes())
	}
	if v, ok := c.Get(4); !ok || v != nil {
		t.Fatal("newest entry missing")
	}
}
