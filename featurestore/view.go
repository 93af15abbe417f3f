package featurestore

import (
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// Kind is the type of a feature's value.
type Kind uint8

const (
	KindInt        Kind = iota // int64
	KindTimestamp              // Unix milliseconds
	KindString                 // string
	KindStringList             // list of strings
)

func (k Kind) String() string {
	switch k {
	case KindInt:
		return "int64"
	case KindTimestamp:
		return "timestamp_ms"
	case KindString:
		return "string"
	case KindStringList:
		return "list<string>"
	}
	return "unknown"
}

// Feature describes one feature of a view.
type Feature struct {
	Name string
	Kind Kind
	Doc  string
}

// Value is one feature value of one entity.
type Value struct {
	Present bool     // false: the entity or the feature has no value
	Int     int64    // KindInt, KindTimestamp
	Str     string   // KindString
	List    []string // KindStringList
	EventTS int64    // event time of the value's last update, Unix ms
}

// View is a named set of features of one entity type, stored under one key
// prefix. Its rows are the entities; the id column is IDColumn.
type View struct {
	Name     string
	Entity   string // "user" or "item"
	IDColumn string
	Features []Feature

	prefix []byte
	// values decodes a stored record and fills out[i] with feature idx[i].
	values func(rec []byte, idx []int, out []Value) error
}

func countFeatures() []Feature {
	var fs []Feature
	for _, b := range Behaviors() {
		fs = append(fs, Feature{Name: b.String() + "_count", Kind: KindInt, Doc: "lifetime number of " + b.String() + " events"})
	}
	return append(fs,
		Feature{Name: "first_event_ts", Kind: KindTimestamp, Doc: "event time of the oldest event"},
		Feature{Name: "last_event_ts", Kind: KindTimestamp, Doc: "event time of the newest event"},
	)
}

// counterValue returns feature i (an index into countFeatures) of c.
func counterValue(c *Counters, i int) Value {
	switch {
	case i < int(numBehaviors):
		return Value{Present: true, Int: c.Count[i], EventTS: c.LastTS[i]}
	case i == int(numBehaviors):
		return Value{Present: true, Int: c.FirstTS, EventTS: c.FirstTS}
	default:
		return Value{Present: true, Int: c.LastTSAny, EventTS: c.LastTSAny}
	}
}

func recentValue(list []Recent) Value {
	v := Value{Present: true, List: make([]string, len(list))}
	for i, r := range list {
		v.List[i] = r.ID
		v.EventTS = max(v.EventTS, r.TS)
	}
	return v
}

var nCounter = len(countFeatures())

// UserView holds per-user lifetime features.
var UserView = &View{
	Name:     "user_features",
	Entity:   "user",
	IDColumn: "user_id",
	Features: append(countFeatures(),
		Feature{Name: "recent_items", Kind: KindStringList, Doc: "the last distinct items, newest first"},
		Feature{Name: "recent_categories", Kind: KindStringList, Doc: "the last distinct categories, newest first"},
	),
	prefix: prefixUser,
	values: func(b []byte, idx []int, out []Value) error {
		var u UserRecord
		if err := u.decode(b); err != nil {
			return err
		}
		for j, i := range idx {
			switch {
			case i < nCounter:
				out[j] = counterValue(&u.Counters, i)
			case i == nCounter:
				out[j] = recentValue(u.RecentItems)
			default:
				out[j] = recentValue(u.RecentCategories)
			}
		}
		return nil
	},
}

// ItemView holds per-item lifetime features.
var ItemView = &View{
	Name:     "item_features",
	Entity:   "item",
	IDColumn: "item_id",
	Features: append(countFeatures(),
		Feature{Name: "category_id", Kind: KindString, Doc: "category named by the newest event"},
	),
	prefix: prefixItem,
	values: func(b []byte, idx []int, out []Value) error {
		var it ItemRecord
		if err := it.decode(b); err != nil {
			return err
		}
		for j, i := range idx {
			if i < nCounter {
				out[j] = counterValue(&it.Counters, i)
				continue
			}
			out[j] = Value{Present: it.CategoryID != "", Str: it.CategoryID, EventTS: it.CategoryTS}
		}
		return nil
	},
}

// Views lists every view.
func Views() []*View { return []*View{UserView, ItemView} }

// LookupView returns the view called name.
func LookupView(name string) (*View, error) {
	for _, v := range Views() {
		if v.Name == name {
			return v, nil
		}
	}
	return nil, fmt.Errorf("%w %q (have user_features, item_features)", ErrUnknownView, name)
}

// Resolve maps feature names to indexes into v.Features; no names means all.
func (v *View) Resolve(names []string) ([]int, error) {
	if len(names) == 0 {
		idx := make([]int, len(v.Features))
		for i := range idx {
			idx[i] = i
		}
		return idx, nil
	}
	idx := make([]int, 0, len(names))
	for _, n := range names {
		i := slices.IndexFunc(v.Features, func(f Feature) bool { return f.Name == n })
		if i < 0 {
			return nil, fmt.Errorf("%w %q in view %s", ErrUnknownFeature, n, v.Name)
		}
		idx = append(idx, i)
	}
	return idx, nil
}

// Row is one entity of a view with the requested feature values.
type Row struct {
	ID     string
	Found  bool
	Values []Value
}

// Get reads features idx of the entities ids, one Row per id in order.
func (s *Store) Get(v *View, ids []string, idx []int) ([]Row, error) {
	rows := make([]Row, len(ids))
	vals := make([]Value, len(ids)*len(idx))
	for r, id := range ids {
		row := &rows[r]
		row.ID = id
		row.Values = vals[r*len(idx) : (r+1)*len(idx) : (r+1)*len(idx)]
		b, ok, err := s.get(makeKey(v.prefix, id))
		if err != nil {
			return nil, fmt.Errorf("get %s %q: %w", v.Name, id, err)
		}
		if !ok {
			continue
		}
		row.Found = true
		if err := v.values(b, idx, row.Values); err != nil {
			return nil, fmt.Errorf("get %s %q: %w", v.Name, id, err)
		}
	}
	return rows, nil
}

// Scan calls fn for every entity of v with id in [lo, hi) in id order; an
// empty hi means no upper bound. The Row passed to fn is reused between
// calls. Scan stops at the first error fn returns.
func (s *Store) Scan(v *View, lo, hi string, idx []int, fn func(*Row) error) error {
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	opts := &pebble.IterOptions{LowerBound: makeKey(v.prefix, lo), UpperBound: prefixEnd(v.prefix)}
	if hi != "" {
		opts.UpperBound = makeKey(v.prefix, hi)
	}
	iter, err := s.db.NewIter(opts)
	if err != nil {
		return err
	}
	defer iter.Close()
	row := Row{Found: true, Values: make([]Value, len(idx))}
	for iter.First(); iter.Valid(); iter.Next() {
		row.ID = string(iter.Key()[len(v.prefix):])
		val, err := iter.ValueAndErr()
		if err != nil {
			return err
		}
		if err := v.values(val, idx, row.Values); err != nil {
			return fmt.Errorf("scan %s %q: %w", v.Name, row.ID, err)
		}
		if err := fn(&row); err != nil {
			return err
		}
	}
	return iter.Error()
}

// Count returns the number of entities in v.
func (s *Store) Count(v *View) int64 {
	st := s.Stats()
	if v.Entity == "user" {
		return st.Users
	}
	return st.Items
}
