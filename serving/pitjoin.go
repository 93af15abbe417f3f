package serving

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"unsafe"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/flight"

	"github.com/streamrec/recsys/featurestore"
)

// A spine too big to join in one slice, its ids in no order, is joined by
// partitions of its entities (a grace hash join, on ranges of ids), so that each entity's history is walked
// once however its rows are spread over the spine, in bounded memory:
//
//  1. per view, every spine row's (id, ts) is appended to the key file of
//     its id's partition (a range of ids: see spineIDs), in spine order;
//  2. per view and partition, the keys are read back in slices of at most
//     joinRows rows, joined (the store reads each entity of a slice once,
//     for all its rows in time order), and the values written to the
//     partition's value file, in the keys' order;
//  3. the spilled spine is read back once more, and each row takes the
//     next values of its id's partition: the rows of one partition come in
//     spine order in both files.
//
// Memory is a slice's keys and values, and the files' buffers.

// maxJoinParts bounds the partitions of a join (and so its open files): a
// spine of more than maxJoinParts slices has partitions of more than a
// slice, read in several.
const maxJoinParts = 64

// partBuffer is the buffer of each partition file.
const partBuffer = 64 << 10

// joinParts is how many partitions a spine of rows rows is joined in,
// slices of at most slice rows: 1 for a spine of one slice.
func joinParts(rows, slice int64) int {
	if rows <= slice {
		return 1
	}
	// Partitions are filled to about 3/4 of a slice on average, so that
	// most hold all their rows in one slice despite the sample's spread.
	return int(min((rows*4+slice*3-1)/(slice*3), maxJoinParts))
}

// partFile is one unlinked temporary file of a join's partition, its
// writes counted against the spill's limit.
type partFile struct {
	f *os.File
	w *bufio.Writer
	r *bufio.Reader
}

// newPart creates a partition file beside the spine's spill.
func (s *spill) newPart() (*partFile, error) {
	f, err := os.CreateTemp(s.dir, "recsys-join-*.part")
	if err != nil {
		return nil, fmt.Errorf("create join partition in %s: %w", s.dir, err)
	}
	_ = os.Remove(f.Name())
	p := &partFile{f: f}
	p.w = bufio.NewWriterSize(limitWriter{s, f}, partBuffer)
	return p, nil
}

// rewind ends the writing and reads the file from its start.
func (p *partFile) rewind() error {
	if err := p.w.Flush(); err != nil {
		return err
	}
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	p.r = bufio.NewReaderSize(p.f, partBuffer)
	return nil
}

func (p *partFile) close() {
	if p != nil {
		_ = p.f.Close()
		_ = os.Remove(p.f.Name())
	}
}

// partJoin is the state of one partitioned join: for each view, its
// partitions' bounds and value files.
type partJoin struct {
	f      *FlightServer
	sp     *spill
	views  []pitView
	tsCol  int
	now    int64
	slice  int64
	bounds [][]string    // by view: partition p holds ids in [bounds[p-1], bounds[p])
	vals   [][]*partFile // by view, by partition
}

// part is the partition of id in view v.
func (j *partJoin) part(v int, id string) int {
	p, found := slices.BinarySearch(j.bounds[v], id)
	if found {
		p++
	}
	return p
}

func (j *partJoin) close() {
	for _, vs := range j.vals {
		for _, p := range vs {
			p.close()
		}
	}
}

// spineIDs follows the ids of one view's column while a spine is
// received: whether they come in order, and a uniform sample of them
// (reservoir sampling), whose quantiles bound the view's partitions. Range
// partitions keep the ids of one partition close in key order, so that
// the store walks its records and tiles forward.
type spineIDs struct {
	sorted bool
	last   string
	n      int64
	sample []string
	rng    *rand.Rand
}

// sampleIDs is the size of a spineIDs sample: 64 quantiles of 64 ids each.
const sampleIDs = 4096

func newSpineIDs() *spineIDs {
	return &spineIDs{sorted: true, rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
}

// add follows the ids of a spine batch's column col (checked: no nulls).
func (s *spineIDs) add(col arrow.Array) {
	ids := stringReader(col)
	for i := range col.Len() {
		id, _ := ids(i)
		if s.sorted && s.n > 0 && id < s.last {
			s.sorted = false
		}
		if len(s.sample) < sampleIDs {
			s.sample = append(s.sample, strings.Clone(id))
		} else if k := s.rng.Int64N(s.n + 1); k < sampleIDs {
			s.sample[k] = strings.Clone(id)
		}
		s.n++
	}
	if s.sorted && col.Len() > 0 {
		s.last, _ = ids(col.Len() - 1)
		s.last = strings.Clone(s.last)
	}
}

// bounds returns the bounds of up to parts partitions of the ids: the
// sample's quantiles, each once.
func (s *spineIDs) bounds(parts int) []string {
	if parts <= 1 || len(s.sample) == 0 {
		return nil
	}
	sample := slices.Clone(s.sample)
	slices.Sort(sample)
	var b []string
	for p := 1; p < parts; p++ {
		q := sample[p*len(sample)/parts]
		if len(b) == 0 || q > b[len(b)-1] {
			b = append(b, q)
		}
	}
	return b
}

// joinParted joins the spilled spine sp (total rows) by partitions and
// writes the answer to w; ids followed each view's ids while the spine was
// received. check returns the error that stops it (the request's end).
func (f *FlightServer) joinParted(w *flight.Writer, out *arrow.Schema, sp *spill, total int64, tsCol int, views []pitView, ids []*spineIDs, now, slice int64, check func() error) error {
	j := &partJoin{f: f, sp: sp, views: views, tsCol: tsCol, now: now, slice: slice}
	defer j.close()
	for v := range views {
		// A view whose ids come in order is joined in spine order: its
		// slices hold whole runs of entities already.
		var b []string
		if !ids[v].sorted {
			b = ids[v].bounds(joinParts(total, slice))
		}
		j.bounds = append(j.bounds, b)
	}
	for v := range views {
		vals, err := j.joinView(v, check)
		j.vals = append(j.vals, vals)
		if err != nil {
			return err
		}
	}
	back, err := sp.rewind(f.mem)
	if err != nil {
		return sp.refusal(err, total)
	}
	return pipeline(w, func(send func(arrow.Record) bool) error {
		var first int64
		for back.Next() {
			if err := check(); err != nil {
				return err
			}
			rec := back.Record()
			for lo := int64(0); lo < rec.NumRows(); lo += slice {
				part := rec.NewSlice(lo, min(lo+slice, rec.NumRows()))
				res, err := j.emit(out, part, first+lo)
				part.Release()
				if err != nil {
					return err
				}
				if !send(res) {
					return nil
				}
			}
			first += rec.NumRows()
		}
		if err := back.Err(); err != nil {
			return toStatus(fmt.Errorf("read spilled spine: %w", err))
		}
		return nil
	})
}

// joinView runs steps 1 and 2 for view v: it returns the value files of
// its partitions, rewound.
func (j *partJoin) joinView(v int, check func() error) ([]*partFile, error) {
	pv := j.views[v]
	keys := make([]*partFile, len(j.bounds[v])+1)
	vals := make([]*partFile, len(keys))
	defer func() {
		for _, k := range keys {
			k.close()
		}
	}()
	for p := range keys {
		var err error
		if keys[p], err = j.sp.newPart(); err != nil {
			return vals, toStatus(err)
		}
	}
	back, err := j.sp.rewind(j.f.mem)
	if err != nil {
		return vals, j.sp.refusal(err, 0)
	}
	var first int64
	var buf []byte
	for back.Next() {
		if err := check(); err != nil {
			return vals, err
		}
		rec := back.Record()
		if err := j.partition(rec, v, first, keys, &buf); err != nil {
			return vals, err
		}
		first += rec.NumRows()
	}
	if err := back.Err(); err != nil {
		return vals, toStatus(fmt.Errorf("read spilled spine: %w", err))
	}
	for p, k := range keys {
		if err := k.rewind(); err != nil {
			return vals, j.sp.refusal(err, first)
		}
		if vals[p], err = j.sp.newPart(); err != nil {
			return vals, toStatus(err)
		}
		if err := j.joinPart(pv, k, vals[p], check); err != nil {
			return vals, err
		}
		if err := vals[p].rewind(); err != nil {
			return vals, j.sp.refusal(err, first)
		}
		k.close()
		keys[p] = nil
	}
	return vals, nil
}

// partition appends the (id, ts) of every row of rec (spine rows from
// first) to the key file of the id's partition.
func (j *partJoin) partition(rec arrow.Record, v int, first int64, keys []*partFile, buf *[]byte) (err error) {
	defer recoverMalformed(&err, "spine", first)
	pv := j.views[v]
	n := int(rec.NumRows())
	ts := make([]int64, n)
	if err := spineTimes(rec.Column(j.tsCol), first, ts); err != nil {
		return err
	}
	ids := stringReader(rec.Column(pv.idCol))
	for i := range n {
		id, valid := ids(i)
		if !valid {
			return invalidArg("spine."+pv.view.IDColumn, "row %d is null", first+int64(i))
		}
		b := binary.AppendUvarint((*buf)[:0], uint64(len(id)))
		b = append(b, id...)
		b = binary.AppendVarint(b, ts[i])
		*buf = b
		if _, err := keys[j.part(v, id)].w.Write(b); err != nil {
			return j.sp.refusal(err, first+int64(i))
		}
	}
	return nil
}

// joinPart joins the keys of one partition, a slice at a time, and
// writes their values to vals in the keys' order.
func (j *partJoin) joinPart(pv pitView, keys, vals *partFile, check func() error) error {
	var ids []string
	var ts []int64
	var ends []int // of each id in arena
	var buf []byte
	for {
		if err := check(); err != nil {
			return err
		}
		// The ids of a slice are read into one arena, made into strings
		// once it has stopped growing (a new arena per slice: the rows
		// of the slice hold its strings).
		var arena []byte
		ids, ts, ends = ids[:0], ts[:0], ends[:0]
		for int64(len(ts)) < j.slice {
			var t int64
			var err error
			arena, t, err = readKey(keys.r, arena)
			if err == io.EOF {
				break
			}
			if err != nil {
				return toStatus(fmt.Errorf("read join partition: %w", err))
			}
			ts, ends = append(ts, t), append(ends, len(arena))
		}
		if len(ts) == 0 {
			return nil
		}
		start := 0
		for _, end := range ends {
			id := ""
			if end > start {
				id = unsafe.String(&arena[start], end-start)
			}
			ids, start = append(ids, id), end
		}
		rows, err := j.f.store.GetEach(pv.view, ids, pv.idx, j.now, ts)
		if err != nil {
			return toStatus(err)
		}
		for r := range rows {
			buf = buf[:0]
			for k, i := range pv.idx {
				buf = appendJoinValue(buf, pv.view.Features[i].Kind, &rows[r].Values[k])
			}
			if _, err := vals.w.Write(buf); err != nil {
				return j.sp.refusal(err, 0)
			}
		}
	}
}

// readKey reads one (id, ts) of a key file, the id appended to arena.
func readKey(r *bufio.Reader, arena []byte) ([]byte, int64, error) {
	arena, err := readBytes(r, arena)
	if err != nil {
		return arena, 0, err // io.EOF at the end
	}
	t, err := binary.ReadVarint(r)
	return arena, t, noEOF(err)
}

// readBytes reads a uvarint length and that many bytes, appended to dst;
// io.EOF only before the length.
func readBytes(r *bufio.Reader, dst []byte) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return dst, err
	}
	if n > math.MaxInt32 {
		return dst, errors.New("corrupt length")
	}
	at := len(dst)
	dst = slices.Grow(dst, int(n))[:at+int(n)]
	_, err = io.ReadFull(r, dst[at:])
	return dst, noEOF(err)
}

// noEOF turns the end of a file inside a record into an error.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// emit returns the spine slice rec (spine rows from first) with its
// features (to release): each row takes the next values of its id's
// partition, for every view.
func (j *partJoin) emit(out *arrow.Schema, rec arrow.Record, first int64) (res arrow.Record, err error) {
	defer recoverMalformed(&err, "spine", first)
	return joinedRecord(j.f.mem, out, rec, j.views, func(v int, pv pitView, bb *batchBuilder) error {
		ids := stringReader(rec.Column(pv.idCol))
		row := featurestore.Row{Values: make([]featurestore.Value, len(pv.idx))}
		for i := range int(rec.NumRows()) {
			id, _ := ids(i) // checked by partition
			r := j.vals[v][j.part(v, id)].r
			for k, fi := range pv.idx {
				if err := readJoinValue(r, pv.view.Features[fi].Kind, &row.Values[k]); err != nil {
					return toStatus(fmt.Errorf("read joined values of spine row %d: %w", first+int64(i), noEOF(err)))
				}
			}
			bb.append(&row)
		}
		return nil
	})
}

// appendJoinValue appends what the answer needs of a value of kind k:
// whether it is present, and its value.
func appendJoinValue(b []byte, k featurestore.Kind, v *featurestore.Value) []byte {
	if v.Status != featurestore.StatusPresent {
		return append(b, 0)
	}
	b = append(b, 1)
	switch k {
	case featurestore.KindFloat:
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v.Float))
	case featurestore.KindInt, featurestore.KindTimestamp:
		b = binary.AppendVarint(b, v.Int)
	case featurestore.KindString:
		b = binary.AppendUvarint(b, uint64(len(v.Str)))
		b = append(b, v.Str...)
	case featurestore.KindStringList:
		b = binary.AppendUvarint(b, uint64(len(v.List)))
		for _, s := range v.List {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
	}
	return b
}

// readJoinValue reads a value of kind k written by appendJoinValue into v.
func readJoinValue(r *bufio.Reader, k featurestore.Kind, v *featurestore.Value) error {
	present, err := r.ReadByte()
	if err != nil {
		return err
	}
	*v = featurestore.Value{}
	if present == 0 {
		return nil
	}
	v.Status = featurestore.StatusPresent
	str := func() (string, error) {
		b, err := readBytes(r, nil)
		return string(b), err
	}
	switch k {
	case featurestore.KindFloat:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return err
		}
		v.Float = math.Float64frombits(binary.LittleEndian.Uint64(b[:]))
	case featurestore.KindInt, featurestore.KindTimestamp:
		v.Int, err = binary.ReadVarint(r)
	case featurestore.KindString:
		v.Str, err = str()
	case featurestore.KindStringList:
		var n uint64
		if n, err = binary.ReadUvarint(r); err == nil {
			if n > math.MaxInt32 {
				return errors.New("corrupt list length")
			}
			v.List = make([]string, 0, min(n, 1024))
			for range n {
				var s string
				if s, err = str(); err != nil {
					break
				}
				v.List = append(v.List, s)
			}
		}
	}
	return err
}
