package readcache

import (
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
)

func TestPutAfterInvalidateDropped(t *testing.T) {
	c := New[int](4)
	if _, ok, _ := c.Get("a"); ok {
		t.Fatal("empty cache hit")
	}
	_, _, gen := c.Get("a")
	c.Invalidate("b") // a commit between the read and the Put
	c.Put("a", 1, gen)
	if _, ok, _ := c.Get("a"); ok {
		t.Fatal("a value read before an invalidation was cached")
	}
	_, _, gen = c.Get("a")
	c.Put("a", 2, gen)
	if v, ok, _ := c.Get("a"); !ok || v != 2 {
		t.Fatalf("Get(a) = %v %v, want 2", v, ok)
	}
	c.Invalidate("a")
	if _, ok, _ := c.Get("a"); ok {
		t.Fatal("invalidated key still cached")
	}
	_, _, gen = c.Get("x")
	c.Put("x", 3, gen)
	c.Clear()
	if c.Len() != 0 {
		t.Fatalf("Len after Clear = %d", c.Len())
	}
}

func TestBounded(t *testing.T) {
	c := New[int](16)
	for i := range 1000 {
		_, _, gen := c.Get(strconv.Itoa(i))
		c.Put(strconv.Itoa(i), i, gen)
		if c.Len() > 16 {
			t.Fatalf("Len = %d after %d puts, want at most 16", c.Len(), i+1)
		}
	}
	if v, ok, _ := c.Get("999"); !ok || v != 999 {
		t.Fatalf("newest entry missing: %v %v", v, ok)
	}
}

// A reader never keeps a value older than the committed one once the
// writer has invalidated it (run with -race).
func TestConcurrentNeverStale(t *testing.T) {
	c := New[int](8)
	var mu sync.RWMutex
	committed := 0
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, ok, gen := c.Get("k"); !ok {
					mu.RLock()
					v := committed
					mu.RUnlock()
					c.Put("k", v, gen)
				}
			}
		}()
	}
	for i := 1; i <= 2000; i++ {
		mu.Lock()
		committed = i
		mu.Unlock()
		c.Invalidate("k")
		if v, ok, _ := c.Get("k"); ok && v < i {
			t.Fatalf("after committing %d and invalidating, the cache holds %d", i, v)
		}
	}
	close(stop)
	wg.Wait()
}

// TestBytesBound checks the byte count against the entries after random
// puts, invalidations and clears, and that it stays within the bound.
func TestBytesBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	c := NewSized[[]byte](100, 30_000, func(v []byte) int64 { return int64(len(v)) })
	for step := range 20_000 {
		k := strconv.Itoa(rng.IntN(300))
		switch r := rng.IntN(100); {
		case r < 85:
			_, _, gen := c.Get(k)
			c.Put(k, make([]byte, rng.IntN(2000)), gen)
		case r < 99:
			c.Invalidate(k)
		default:
			c.Clear()
		}
		var sum int64
		for _, e := range c.m {
			sum += int64(len(e.v)) + EntryOverhead
		}
		if sum != c.Bytes() || sum > 30_000 || len(c.m) > 100 {
			t.Fatalf("step %d: bytes %d, entries sum to %d in %d entries", step, c.Bytes(), sum, len(c.m))
		}
	}
}

// Replace gives the cached keys of fresh their new values, drops the
// other cached keys, adds no key that was not cached, and drops a Put of
// a value read before it.
func TestReplace(t *testing.T) {
	c := NewSized[string](8, 1000, func(v string) int64 { return int64(len(v)) })
	for _, k := range []string{"a", "b", "c"} {
		_, _, gen := c.Get(k)
		c.Put(k, k+"0", gen)
	}
	_, _, gen := c.Get("d") // a read in flight across the commit
	if !c.Cached("a") || c.Cached("d") {
		t.Fatalf("Cached(a), Cached(d) = %v, %v; want true, false", c.Cached("a"), c.Cached("d"))
	}
	c.Replace([]string{"a", "b", "x"}, map[string]string{"a": "a1", "x": "x1"})
	c.Put("d", "d0", gen)
	want := map[string]string{"a": "a1", "c": "c0"}
	for _, k := range []string{"a", "b", "c", "d", "x"} {
		v, ok, _ := c.Get(k)
		if w, in := want[k]; ok != in || v != w {
			t.Errorf("Get(%s) = %q %v, want %q %v", k, v, ok, w, in)
		}
	}
	if got, want := c.Bytes(), int64(2*(2+EntryOverhead)); got != want {
		t.Errorf("Bytes = %d, want %d", got, want)
	}
	// A larger new value is weighed, and the cache kept within its bytes.
	big := string(make([]byte, 1000-EntryOverhead))
	c.Replace([]string{"a"}, map[string]string{"a": big})
	if c.Bytes() > 1000 {
		t.Errorf("Bytes = %d after a larger value, want at most 1000", c.Bytes())
	}
	if h, m := c.Lookups(); h != 2 || m != 7 {
		t.Errorf("Lookups = %d hits, %d misses; want 2, 7", h, m)
	}
}
