// Package codec holds the primitives that the store's records and the
// models' records are hand-encoded with: varints, length-prefixed strings,
// little-endian floats and a leading version byte. A decoder never panics:
// a truncated or malformed record sets its error flag, and Done reports
// ErrCorrupt.
package codec

import (
	"encoding/binary"
	"errors"
	"math"
)

// ErrCorrupt is returned when a stored record cannot be decoded; the
// store exports it as featurestore.ErrCorrupt.
var ErrCorrupt = errors.New("featurestore: corrupt record")

// Encoder appends to B.
type Encoder struct{ B []byte }

func (e *Encoder) Uvarint(v uint64) { e.B = binary.AppendUvarint(e.B, v) }
func (e *Encoder) Varint(v int64)   { e.B = binary.AppendVarint(e.B, v) }
func (e *Encoder) Str(s string)     { e.Uvarint(uint64(len(s))); e.B = append(e.B, s...) }
func (e *Encoder) F64(f float64)    { e.B = binary.LittleEndian.AppendUint64(e.B, math.Float64bits(f)) }

// Decoder reads from B; Err is set once a read went past the end or met a
// malformed value, and every later read returns zero.
type Decoder struct {
	B   []byte
	Err bool
}

// Fail marks the record corrupt.
func (d *Decoder) Fail() { d.Err, d.B = true, nil }

func (d *Decoder) Uvarint() uint64 {
	v, n := binary.Uvarint(d.B)
	if n <= 0 {
		d.Fail()
		return 0
	}
	d.B = d.B[n:]
	return v
}

func (d *Decoder) Varint() int64 {
	v, n := binary.Varint(d.B)
	if n <= 0 {
		d.Fail()
		return 0
	}
	d.B = d.B[n:]
	return v
}

func (d *Decoder) Str() string {
	n := d.Uvarint()
	if n > uint64(len(d.B)) {
		d.Fail()
		return ""
	}
	s := string(d.B[:n])
	d.B = d.B[n:]
	return s
}

func (d *Decoder) F64() float64 {
	if len(d.B) < 8 {
		d.Fail()
		return 0
	}
	f := math.Float64frombits(binary.LittleEndian.Uint64(d.B))
	d.B = d.B[8:]
	return f
}

func (d *Decoder) Byte() byte {
	if len(d.B) == 0 {
		d.Err = true
		return 0
	}
	c := d.B[0]
	d.B = d.B[1:]
	return c
}

// Version reads the leading version byte, which must be v.
func (d *Decoder) Version(v byte) {
	if len(d.B) == 0 || d.B[0] != v {
		d.Fail()
		return
	}
	d.B = d.B[1:]
}

// Done is ErrCorrupt unless every read succeeded and the record is used up.
func (d *Decoder) Done() error {
	if d.Err || len(d.B) != 0 {
		return ErrCorrupt
	}
	return nil
}
