// Package eventfile reads files of behavior events, for every command that
// takes them (replay, serve --load, kafka produce, eval): one event a line,
// JSON objects of the API's event fields or Taobao CSV rows, plain or
// gzip-compressed (recognized by the gzip magic number, whatever the
// name), "-" for the standard input. Blank lines are skipped; a line that
// does not decode is handed on with the reason (never a crash, never a
// stop), and a line longer than MaxLine ends the read with an error naming
// it.
package eventfile

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater"
)

// Formats of event lines.
const (
	JSON   = "json"   // updater.DecodeJSONEvent; the default
	Taobao = "taobao" // updater.DecodeTaobaoCSV: user_id,item_id,category_id,behavior,unix_seconds
)

// MaxLine is the longest line read (bytes).
const MaxLine = 4 << 20

// Open opens path (- is the standard input), decompressing it when it
// starts with the gzip magic number.
func Open(path string) (io.ReadCloser, error) {
	f := os.Stdin
	if path != "-" {
		var err error
		if f, err = os.Open(path); err != nil {
			return nil, err
		}
	}
	br := bufio.NewReaderSize(f, 1<<20)
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return &file{Reader: gz, close: func() error { return errors.Join(gz.Close(), f.Close()) }}, nil
	}
	return &file{Reader: br, close: f.Close}, nil
}

type file struct {
	io.Reader
	close func() error
}

func (f *file) Close() error { return f.close() }

// Lines calls fn with every non-blank line of path, in order; the line is
// valid only during the call. It stops at fn's first error.
func Lines(path string, fn func(line []byte) error) error {
	r, err := Open(path)
	if err != nil {
		return err
	}
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), MaxLine)
	n := 0
	for sc.Scan() {
		n++
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%s: line %d: longer than %d MiB", path, n+1, MaxLine>>20)
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// Decode decodes one line in format (Taobao, else JSON).
func Decode(line []byte, format string) (*recsysv1.Event, *updater.FieldError) {
	if format == Taobao {
		return updater.DecodeTaobaoCSV(string(line))
	}
	return updater.DecodeJSONEvent(line)
}

// Read decodes every line of path in format and calls fn with the event or
// the reason it could not be decoded.
func Read(path, format string, fn func(*recsysv1.Event, *updater.FieldError) error) error {
	return Lines(path, func(line []byte) error { return fn(Decode(line, format)) })
}

// ReadAll calls fn for every line of paths in order, or, with sorted, for
// all of them in event-time order (stable: lines of equal time keep their
// order; undecodable lines come first). Sorting holds every event in
// memory.
func ReadAll(paths []string, format string, sorted bool, fn func(*recsysv1.Event, *updater.FieldError) error) error {
	if !sorted {
		for _, p := range paths {
			if err := Read(p, format, fn); err != nil {
				return err
			}
		}
		return nil
	}
	var evs []*recsysv1.Event
	for _, p := range paths {
		err := Read(p, format, func(ev *recsysv1.Event, ferr *updater.FieldError) error {
			if ferr != nil {
				return fn(nil, ferr)
			}
			evs = append(evs, ev)
			return nil
		})
		if err != nil {
			return err
		}
	}
	slices.SortStableFunc(evs, func(a, b *recsysv1.Event) int { return cmp.Compare(a.Ts, b.Ts) })
	for i, ev := range evs {
		evs[i] = nil
		if err := fn(ev, nil); err != nil {
			return err
		}
	}
	return nil
}

// Count counts the lines of paths (decompressed; a last line without a
// newline counts), for progress bars.
func Count(paths []string) (int64, error) {
	var n int64
	buf := make([]byte, 1<<20)
	for _, p := range paths {
		err := func() error {
			r, err := Open(p)
			if err != nil {
				return err
			}
			defer r.Close()
			var last byte = '\n'
			for {
				k, err := r.Read(buf)
				n += int64(bytes.Count(buf[:k], []byte{'\n'}))
				if k > 0 {
					last = buf[k-1]
				}
				if err == io.EOF {
					if last != '\n' {
						n++
					}
					return nil
				}
				if err != nil {
					return fmt.Errorf("%s: %w", p, err)
				}
			}
		}()
		if err != nil {
			return 0, err
		}
	}
	return n, nil
}
