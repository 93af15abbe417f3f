package serving

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"github.com/apache/arrow/go/v17/arrow/memory"

	"github.com/streamrec/recsys/updater/datadir"
)

// defaultMaxSpillBytes bounds the disk one spine takes by default.
const defaultMaxSpillBytes = 64 << 30

// WithSpill makes point-in-time joins spill their spines to dir ("": the
// system's temporary directory), at most maxBytes each (0: 64 GiB), and
// never so much that the filesystem keeps less than keepFree bytes free
// (the data dir's reserve for ingest).
func (f *FlightServer) WithSpill(dir string, maxBytes int64, keepFree uint64) *FlightServer {
	f.spill = spillConfig{dir: dir, maxBytes: maxBytes, keepFree: keepFree}
	return f
}

type spillConfig struct {
	dir      string
	maxBytes int64
	keepFree uint64
}

// errSpillLimit is the error of a spill past its limit.
var errSpillLimit = errors.New("spill limit")

// spill is the spine of one exchange on disk, an Arrow IPC stream in an
// unlinked temporary file: the file is gone when the exchange ends, or
// the process, however it ends.
type spill struct {
	dir   string
	file  *os.File
	buf   *bufio.Writer
	w     *ipc.Writer
	n     int64 // bytes written
	limit int64
	// why is the limit's explanation for refusals ("--flight.max-spill-bytes", ...).
	why string
	rd  *ipc.Reader
}

// newSpill creates the spill of a spine of schema sch.
func (f *FlightServer) newSpill(sch *arrow.Schema) (*spill, error) {
	cfg := f.spill
	dir := cfg.dir
	if dir == "" {
		dir = os.TempDir()
	}
	limit, why := cfg.maxBytes, "--flight.max-spill-bytes"
	if limit <= 0 {
		limit = defaultMaxSpillBytes
	}
	if free, err := datadir.DiskFree(dir); err == nil {
		if room := int64(min(free-min(free, cfg.keepFree), 1<<62)); room < limit {
			limit, why = room, fmt.Sprintf("the free space of %s less --ingest.min-free-bytes", dir)
		}
	}
	file, err := os.CreateTemp(dir, "recsys-spine-*.arrows")
	if err != nil {
		return nil, toStatus(fmt.Errorf("create spine spill in %s: %w", dir, err))
	}
	// Unlinked at once: nothing is left behind, even by a crash. (Where
	// an open file cannot be removed, close removes it.)
	_ = os.Remove(file.Name())
	s := &spill{dir: dir, file: file, limit: limit, why: why}
	s.buf = bufio.NewWriterSize(limitWriter{s, file}, 1<<20)
	s.w = ipc.NewWriter(s.buf, ipc.WithSchema(sch), ipc.WithAllocator(f.mem))
	return s, nil
}

// limitWriter writes to f (the spill's file, or one of a partitioned
// join's files beside it), counting the bytes in its spill against the
// spill's limit.
type limitWriter struct {
	s *spill
	f *os.File
}

func (l limitWriter) Write(p []byte) (int, error) {
	if l.s.n+int64(len(p)) > l.s.limit {
		return 0, errSpillLimit
	}
	n, err := l.f.Write(p)
	l.s.n += int64(n)
	return n, err
}

func (s *spill) write(rec arrow.Record) error { return s.w.Write(rec) }

// rewind ends the writing and returns a reader of the spilled batches,
// in order, allocated from mem; the spill owns it (close releases it).
// Every rewind reads the spine from its start again, releasing the
// previous reader.
func (s *spill) rewind(mem memory.Allocator) (*ipc.Reader, error) {
	if s.w != nil {
		if err := s.w.Close(); err != nil {
			return nil, err
		}
		s.w = nil
		if err := s.buf.Flush(); err != nil {
			return nil, err
		}
	}
	if s.rd != nil {
		s.rd.Release()
		s.rd = nil
	}
	if _, err := s.file.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	rd, err := ipc.NewReader(bufio.NewReaderSize(s.file, 1<<20), ipc.WithAllocator(mem))
	if err != nil {
		return nil, fmt.Errorf("read spilled spine: %w", err)
	}
	s.rd = rd
	return rd, nil
}

// refusal is the status of err, from spilling after rows rows.
func (s *spill) refusal(err error, rows int64) error {
	switch {
	case errors.Is(err, errSpillLimit):
		return exhausted(fmt.Sprintf("spine: more than %d MiB spilled to disk (%d rows so far), the limit set by %s; split it into several exchanges", s.limit>>20, rows, s.why), "")
	case errors.Is(err, syscall.ENOSPC):
		return exhausted(fmt.Sprintf("spine: the disk is full after spilling %d MiB (%d rows); split it into several exchanges", s.n>>20, rows), reasonDiskFull)
	}
	return toStatus(fmt.Errorf("spill spine: %w", err))
}

// close releases the spill and removes its file.
func (s *spill) close() {
	if s.w != nil {
		_ = s.w.Close()
	}
	if s.rd != nil {
		s.rd.Release()
	}
	_ = s.file.Close()
	_ = os.Remove(s.file.Name())
}
