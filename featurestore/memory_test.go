package featurestore

import (
	"strings"
	"testing"
)

func TestSplitMemory(t *testing.T) {
	if _, err := SplitMemory(MinMemoryLimit - 1); err == nil || !strings.Contains(err.Error(), "256 MiB") {
		t.Fatalf("a limit under the minimum: %v", err)
	}
	for _, limit := range []int64{MinMemoryLimit, 1 << 30, 2 << 30, 24 << 30} {
		b, err := SplitMemory(limit)
		if err != nil {
			t.Fatal(err)
		}
		pebble := b.PebbleCache + memTables*b.MemTable
		cached := pebble + b.WindowState + b.StoreRecords + b.ModelRecords
		if b.GoHeap != limit-pebble || cached > limit*3/4 || b.MemTable > memTableSize || b.MemTable < 8<<20 {
			t.Errorf("limit %d: %+v: caches %d", limit, b, cached)
		}
		if pebbleOutsideHeap && b.GoLimit != b.GoHeap || !pebbleOutsideHeap && b.GoLimit != limit {
			t.Errorf("limit %d: Go limit %d", limit, b.GoLimit)
		}
		// Options take the budget; a window state turned off stays off,
		// and a smaller one asked for is kept.
		for _, win := range []int64{0, -1, 1 << 20} {
			o := Options{MemoryLimit: limit, WindowCacheBytes: win}
			o.EnsureDefaults()
			want := b.WindowState
			if win != 0 {
				want = win
			}
			if o.CacheBytes != b.PebbleCache || o.memTableSize != b.MemTable || o.RecordCacheBytes != b.StoreRecords || o.WindowCacheBytes != want {
				t.Errorf("limit %d, window %d: options %+v", limit, win, o)
			}
		}
	}
	if _, err := Open(t.TempDir(), Options{MemoryLimit: 1 << 20, Logger: quietLogger()}); err == nil || !strings.Contains(err.Error(), "memory limit") {
		t.Fatalf("Open with a limit under the minimum: %v", err)
	}
}
