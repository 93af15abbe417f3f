package serving

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Non-finite numbers in REST answers. protojson writes a double or float
// field holding NaN or ±Inf as the string "NaN", "Infinity" or
// "-Infinity", and refuses to write a google.protobuf.Value holding one.
// The REST API answers null for every number that is not finite
// instead. The common case (all finite) costs one walk of the message and
// nothing else; otherwise Values are nulled in a copy and the double
// fields rewritten in protojson's output, guided by the message's
// descriptor, so that a string field that happens to read "NaN" stays a
// string.

// marshalFinite marshals msg with protojson, non-finite numbers as null.
func (m fastJSON) marshalFinite(msg proto.Message) ([]byte, error) {
	fields, values := nonFinite(msg.ProtoReflect(), false)
	if !fields && !values {
		return m.JSONPb.Marshal(msg)
	}
	if values {
		msg = proto.Clone(msg)
		nonFinite(msg.ProtoReflect(), true)
	}
	b, err := m.JSONPb.Marshal(msg)
	if err != nil || !fields {
		return b, err
	}
	return nullNonFinite(b, msg.ProtoReflect().Descriptor())
}

const valueName protoreflect.FullName = "google.protobuf.Value"

func isFloatKind(k protoreflect.Kind) bool {
	return k == protoreflect.DoubleKind || k == protoreflect.FloatKind
}

func notFinite(f float64) bool { return math.IsNaN(f) || math.IsInf(f, 0) }

// nonFinite reports whether m holds a non-finite number in a double or
// float field (fields) or in a google.protobuf.Value (values), at any
// depth. With fix, such Values become null_value.
func nonFinite(m protoreflect.Message, fix bool) (fields, values bool) {
	md := m.Descriptor()
	if md.FullName() == valueName {
		num := md.Fields().ByName("number_value")
		if m.Has(num) && notFinite(m.Get(num).Float()) {
			if fix {
				m.Set(md.Fields().ByName("null_value"), protoreflect.ValueOfEnum(0))
			}
			return false, true
		}
	}
	check := func(fd protoreflect.FieldDescriptor, v protoreflect.Value) {
		switch {
		case isFloatKind(fd.Kind()):
			fields = fields || notFinite(v.Float())
		case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
			f, vs := nonFinite(v.Message(), fix)
			fields, values = fields || f, values || vs
		}
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			for l, i := v.List(), 0; i < l.Len(); i++ {
				check(fd, l.Get(i))
			}
		case fd.IsMap():
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				check(fd.MapValue(), mv)
				return true
			})
		default:
			check(fd, v)
		}
		return true
	})
	return fields, values
}

// nullNonFinite rewrites protojson's output b of a message of type md:
// the strings standing for non-finite double and float fields become null.
// Everything else is copied as it is.
func nullNonFinite(b []byte, md protoreflect.MessageDescriptor) ([]byte, error) {
	r := &nullRewriter{dec: json.NewDecoder(bytes.NewReader(b)), out: make([]byte, 0, len(b))}
	if err := r.message(md); err != nil {
		return nil, fmt.Errorf("rewrite non-finite numbers: %w", err)
	}
	return r.out, nil
}

type nullRewriter struct {
	dec *json.Decoder
	out []byte
}

// raw copies the next value unchanged.
func (r *nullRewriter) raw() error {
	var v json.RawMessage
	if err := r.dec.Decode(&v); err != nil {
		return err
	}
	r.out = append(r.out, v...)
	return nil
}

// open reads the delimiter that starts a composite value, or null.
func (r *nullRewriter) open(want json.Delim) (bool, error) {
	tok, err := r.dec.Token()
	if err != nil {
		return false, err
	}
	if tok == nil {
		r.out = append(r.out, "null"...)
		return false, nil
	}
	if tok != want {
		return false, fmt.Errorf("got %v, want %v", tok, want)
	}
	r.out = append(r.out, byte(want))
	return true, nil
}

func (r *nullRewriter) close() error {
	tok, err := r.dec.Token()
	if err != nil {
		return err
	}
	r.out = append(r.out, byte(tok.(json.Delim)))
	return nil
}

// key reads an object key and writes it with the separators.
func (r *nullRewriter) key(first bool) (string, error) {
	tok, err := r.dec.Token()
	if err != nil {
		return "", err
	}
	k, ok := tok.(string)
	if !ok {
		return "", fmt.Errorf("got %v, want an object key", tok)
	}
	if !first {
		r.out = append(r.out, ',')
	}
	r.out = appendString(r.out, k)
	r.out = append(r.out, ':')
	return k, nil
}

func (r *nullRewriter) message(md protoreflect.MessageDescriptor) error {
	switch md.FullName() {
	case "google.protobuf.DoubleValue", "google.protobuf.FloatValue":
		return r.float()
	}
	if md.FullName().Parent() == "google.protobuf" { // other well-known types: no double fields in their JSON form
		return r.raw()
	}
	ok, err := r.open('{')
	if !ok || err != nil {
		return err
	}
	for first := true; r.dec.More(); first = false {
		k, err := r.key(first)
		if err != nil {
			return err
		}
		fd := md.Fields().ByTextName(k)
		if fd == nil {
			fd = md.Fields().ByJSONName(k)
		}
		if fd == nil {
			err = r.raw()
		} else {
			err = r.field(fd)
		}
		if err != nil {
			return err
		}
	}
	return r.close()
}

func (r *nullRewriter) field(fd protoreflect.FieldDescriptor) error {
	switch {
	case fd.IsList():
		ok, err := r.open('[')
		if !ok || err != nil {
			return err
		}
		for first := true; r.dec.More(); first = false {
			if !first {
				r.out = append(r.out, ',')
			}
			if err := r.single(fd); err != nil {
				return err
			}
		}
		return r.close()
	case fd.IsMap():
		ok, err := r.open('{')
		if !ok || err != nil {
			return err
		}
		for first := true; r.dec.More(); first = false {
			if _, err := r.key(first); err != nil {
				return err
			}
			if err := r.single(fd.MapValue()); err != nil {
				return err
			}
		}
		return r.close()
	}
	return r.single(fd)
}

// single rewrites one value of fd's kind (an element, for lists).
func (r *nullRewriter) single(fd protoreflect.FieldDescriptor) error {
	switch {
	case isFloatKind(fd.Kind()):
		return r.float()
	case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
		return r.message(fd.Message())
	}
	return r.raw()
}

func (r *nullRewriter) float() error {
	var v json.RawMessage
	if err := r.dec.Decode(&v); err != nil {
		return err
	}
	switch string(v) {
	case `"NaN"`, `"Infinity"`, `"-Infinity"`:
		r.out = append(r.out, "null"...)
	default:
		r.out = append(r.out, v...)
	}
	return nil
}
