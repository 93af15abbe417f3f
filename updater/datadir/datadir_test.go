package datadir

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// A data dir is served by one process at a time: a second Open is refused
// with the owner's pid, and the dir opens again once the first is closed.
func TestOpenLocksTheDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d, err := Open(dir, Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"log", "state", "recsys.lock"} {
		if _, err := os.Stat(filepath.Join(dir, sub)); err != nil {
			t.Errorf("data dir layout: %v", err)
		}
	}
	if _, err := Open(dir, Options{Logger: quiet()}); err == nil || !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second open = %v, want refused as in use by pid %d", err, os.Getpid())
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d, err = Open(dir, Options{Logger: quiet()})
	if err != nil {
		t.Fatalf("reopen after close: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

// A state that has applied more of the log than the log holds (a log and a
// state from different runs) is refused rather than served.
func TestOpenRefusesStateAheadOfLog(t *testing.T) {
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	d, err := Open(a, Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Store.Apply(5, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d, err = Open(b, Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// b's empty log with a's state.
	if err := os.RemoveAll(filepath.Join(b, "state")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(a, "state"), filepath.Join(b, "state")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(b, Options{Logger: quiet()}); err == nil || !strings.Contains(err.Error(), "past the log end") {
		t.Fatalf("open = %v, want refused: applied offset past the log end", err)
	}
}
