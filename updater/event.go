package updater

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/streamrec/recsys/featurestore"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// MaxIDBytes is the longest user, item, category or event id accepted.
const MaxIDBytes = 256

// MinTS is the oldest event time accepted, in Unix ms: 1971-01-01T00:00:00Z.
// Smaller values are almost always Unix seconds sent where milliseconds
// belong: seconds stay below it for dates until about the year 2969.
// Serving applies the same rule to the integer times of a point-in-time
// spine.
const MinTS = 31_536_000_000

const minTS = MinTS

// minTSDate is minTS as a date, for messages.
var minTSDate = time.UnixMilli(minTS).UTC().Format(time.DateOnly)

// FieldError says which field of an event is invalid and why.
type FieldError struct {
	Field  string
	Code   string // stable kind, such as "missing" or "future"
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Codes of FieldError, stable for clients and metrics.
const (
	CodeMissing          = "missing"
	CodeTooLong          = "too_long"
	CodeInvalidUTF8      = "invalid_utf8"
	CodeControlCharacter = "control_character"
	CodeUnknownBehavior  = "unknown_behavior"
	CodeTooOld           = "too_old"
	CodeFuture           = "future"
	CodeLate             = "late"
	CodeMalformed        = "malformed"
	CodeUnknownField     = "unknown_field"
	CodeReserved         = "reserved"
)

func fieldErr(field, code, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Code: code, Reason: fmt.Sprintf(format, args...)}
}

// CheckID validates a required id (user, item or category) named field,
// as Normalize does for events; read paths use it for their ids.
func CheckID(field, id string) *FieldError {
	if err := checkID(field, id, false); err != nil {
		return err
	}
	return checkPathID(field, id)
}

// checkPathID refuses the ids that cannot be a segment of a REST path:
// "." and ".." are resolved away by URL normalization (RFC 3986 §5.2.4),
// so an entity with such an id could be written but never read.
func checkPathID(field, id string) *FieldError {
	if id == "." || id == ".." {
		return fieldErr(field, CodeReserved, "%q is reserved (a URL path cannot carry it)", id)
	}
	return nil
}

// checkID validates an id field; optional ids may be empty.
func checkID(field, id string, optional bool) *FieldError {
	if id == "" {
		if optional {
			return nil
		}
		return fieldErr(field, CodeMissing, "required")
	}
	if len(id) > MaxIDBytes {
		return fieldErr(field, CodeTooLong, "%d bytes exceeds the limit of %d", len(id), MaxIDBytes)
	}
	if !utf8.ValidString(id) {
		return fieldErr(field, CodeInvalidUTF8, "not valid UTF-8")
	}
	for _, r := range id {
		if r < 0x20 || r == 0x7f {
			return fieldErr(field, CodeControlCharacter, "contains control character %U", r)
		}
	}
	return nil
}

// Normalize validates ev against the clock now (events more than maxSkew
// ahead of it are rejected) and returns it in canonical form: behavior
// aliases resolved and an event id derived from the content when absent.
func Normalize(ev *recsysv1.Event, now time.Time, maxSkew time.Duration) (featurestore.Event, *FieldError) {
	if ev == nil {
		return featurestore.Event{}, fieldErr("event", CodeMissing, "required")
	}
	for _, f := range [...]struct {
		name, v  string
		optional bool
	}{
		{"user_id", ev.UserId, false},
		{"item_id", ev.ItemId, false},
		{"category_id", ev.CategoryId, true},
		{"event_id", ev.EventId, true},
	} {
		if err := checkID(f.name, f.v, f.optional); err != nil {
			return featurestore.Event{}, err
		}
		if f.name != "event_id" {
			if err := checkPathID(f.name, f.v); err != nil {
				return featurestore.Event{}, err
			}
		}
	}
	b, ok := featurestore.ParseBehavior(ev.Behavior)
	if !ok {
		if ev.Behavior == "" {
			return featurestore.Event{}, fieldErr("behavior", CodeMissing, "required (view, cart, fav or purchase)")
		}
		return featurestore.Event{}, fieldErr("behavior", CodeUnknownBehavior, "unknown value %q (want view, cart, fav, purchase, pv or buy)", truncate(ev.Behavior))
	}
	switch {
	case ev.Ts == 0:
		return featurestore.Event{}, fieldErr("ts", CodeMissing, "required (Unix milliseconds)")
	case ev.Ts < minTS:
		return featurestore.Event{}, fieldErr("ts", CodeTooOld, "%d is before %s (Unix milliseconds expected, not seconds)", ev.Ts, minTSDate)
	case ev.Ts > now.Add(maxSkew).UnixMilli():
		return featurestore.Event{}, fieldErr("ts", CodeFuture, "%s is more than %s in the future", time.UnixMilli(ev.Ts).UTC().Format(time.RFC3339), maxSkew)
	}
	out := featurestore.Event{
		ID:         ev.EventId,
		UserID:     ev.UserId,
		ItemID:     ev.ItemId,
		CategoryID: ev.CategoryId,
		Behavior:   b,
		TS:         ev.Ts,
	}
	// An id in the derived form (from the log, or from Kafka records this
	// server published) counts as derived only if it is the content's.
	if out.ID == "" {
		out.ID, out.Derived = DeriveID(&out), true
	} else if len(out.ID) == derivedIDLen && strings.HasPrefix(out.ID, featurestore.DerivedIDPrefix) {
		out.Derived = out.ID == DeriveID(&out)
	}
	return out, nil
}

// DeriveID returns the id of an event that came without one: a hash of its
// content, so that the same event sent twice is applied once. Two events
// that agree in user, item, category, behavior and millisecond are one.
func DeriveID(ev *featurestore.Event) string {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	for _, s := range []string{ev.UserID, ev.ItemID, ev.CategoryID, ev.Behavior.String()} {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
		h.Write([]byte(s))
	}
	h.Write(n[:binary.PutVarint(n[:], ev.TS)])
	var sum [sha256.Size]byte
	return featurestore.DerivedIDPrefix + hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// derivedIDLen is the length of a derived id: the prefix and 32 hex digits.
const derivedIDLen = len(featurestore.DerivedIDPrefix) + 32

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// toProto converts a normalized event to its log representation.
func toProto(ev *featurestore.Event) *recsysv1.Event {
	return &recsysv1.Event{
		EventId:    ev.ID,
		UserId:     ev.UserID,
		ItemId:     ev.ItemID,
		CategoryId: ev.CategoryID,
		Behavior:   ev.Behavior.String(),
		Ts:         ev.TS,
	}
}

// Late applies the watermark rule of every source: an event at ts is late
// when it is older than the watermark, the newest event time accepted
// before it (maxTS; 0 when there is none yet, and then nothing is late)
// minus the allowed lateness. The embedded log applies it at ingest, in log
// order; a Kafka topic per partition, as its records are decoded.
func Late(ts, maxTS int64, lateness time.Duration) (watermark int64, late bool) {
	if maxTS == 0 {
		return 0, false
	}
	watermark = maxTS - lateness.Milliseconds()
	return watermark, ts < watermark
}
