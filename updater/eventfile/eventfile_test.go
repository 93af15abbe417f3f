package eventfile

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater"
)

const taobao = "1,10,100,pv,1511658000\n\n2,20,200,buy,1511650000\nnot,a,row\n3,30,300,cart,1511655000" // no final newline

func write(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func gz(t *testing.T, s string) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	if _, err := w.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// The same rows read alike plain and gzip-compressed (recognized by the
// magic number, not the name), in file order or sorted by time; a bad row
// is handed on with its reason and the read goes on.
func TestReadPlainAndGzip(t *testing.T) {
	for _, tc := range []struct {
		name   string
		data   []byte
		sorted bool
		want   string
	}{
		{"plain.csv", []byte(taobao), false, "1 2 ! 3"},
		{"packed.csv", gz(t, taobao), false, "1 2 ! 3"},
		{"plain.csv", []byte(taobao), true, "! 2 3 1"},
	} {
		p := write(t, tc.name, tc.data)
		var got []string
		err := ReadAll([]string{p}, Taobao, tc.sorted, func(ev *recsysv1.Event, ferr *updater.FieldError) error {
			if ferr != nil {
				got = append(got, "!")
				return nil
			}
			got = append(got, ev.UserId)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if g := strings.Join(got, " "); g != tc.want {
			t.Errorf("%s sorted=%v: users %q, want %q", tc.name, tc.sorted, g, tc.want)
		}
		n, err := Count([]string{p})
		if err != nil || n != 5 {
			t.Errorf("%s: Count = %d, %v; want 5 lines", tc.name, n, err)
		}
	}
}

func TestReadJSON(t *testing.T) {
	p := write(t, "events.jsonl", []byte(`{"user_id":"u","item_id":"i","behavior":"view","ts":1511658000000}`+"\n{\n"))
	var ok, bad int
	err := Read(p, JSON, func(ev *recsysv1.Event, ferr *updater.FieldError) error {
		if ferr != nil {
			bad++
		} else if ev.UserId == "u" {
			ok++
		}
		return nil
	})
	if err != nil || ok != 1 || bad != 1 {
		t.Fatalf("read: %d ok, %d bad, err %v; want 1, 1, nil", ok, bad, err)
	}
}

// A line past MaxLine ends the read with an error that names it (no
// crash, no silent truncation).
func TestLineTooLong(t *testing.T) {
	p := write(t, "long.jsonl", []byte("{}\n"+strings.Repeat("x", MaxLine+1)+"\n"))
	err := Lines(p, func([]byte) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("Lines = %v, want an error naming line 2", err)
	}
}

func TestOpenMissingAndCorruptGzip(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("Open of a missing file: no error")
	}
	p := write(t, "bad.gz", []byte{0x1f, 0x8b, 0, 1, 2})
	if err := Lines(p, func([]byte) error { return nil }); err == nil {
		t.Error("a corrupt gzip file read without error")
	}
}
