package main

import "testing"

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "4096": 4096, "2GiB": 2 << 30, "1536MiB": 1536 << 20, "512m": 512 << 20, "1.5G": 3 << 29,
		"10KB": 10_000, "2 GB": 2e9, "64k": 64 << 10, "1TiB": 1 << 40, "100b": 100,
	} {
		got, err := parseByteSize(in)
		if err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "2XB", "-1G", "NaN", "Inf", "1e30T", "2 G B"} {
		if got, err := parseByteSize(in); err == nil {
			t.Errorf("parseByteSize(%q) = %d, want an error", in, got)
		}
	}
	for _, v := range []byteSize{0, 4096, 2 << 30, 1536 << 20, 1000} {
		var back byteSize
		if err := back.Set(v.String()); err != nil || back != v {
			t.Errorf("%d: String %q reads back as %d, %v", int64(v), v.String(), int64(back), err)
		}
	}
}
