package updater

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// jsonFields maps every accepted JSON key (proto and lowerCamel names) to
// the event field it sets.
var jsonFields = map[string]string{
	"event_id": "event_id", "eventId": "event_id",
	"user_id": "user_id", "userId": "user_id",
	"item_id": "item_id", "itemId": "item_id",
	"category_id": "category_id", "categoryId": "category_id",
	"behavior": "behavior",
	"ts":       "ts",
}

// DecodeJSONEvent decodes one event from a JSON object. Ids may be strings
// or integers; ts may be Unix milliseconds (a number or a string of digits)
// or an RFC 3339 time. Unknown keys, a field given twice (also under its
// camelCase alias) and data after the object are errors, so typos and
// ambiguity do not pass silently. Keys are read in document order, so the
// result never depends on map iteration. The event is not validated beyond
// its JSON shape.
func DecodeJSONEvent(data []byte) (*recsysv1.Event, *FieldError) {
	notObject := fieldErr("event", CodeMalformed, "not a JSON object")
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		return nil, notObject
	}
	ev := new(recsysv1.Event)
	seen := make(map[string]bool, len(jsonFields))
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			return nil, notObject
		}
		k, _ := tok.(string)
		var raw json.RawMessage
		if err := d.Decode(&raw); err != nil {
			return nil, notObject
		}
		field, ok := jsonFields[k]
		if !ok {
			name := truncate(k)
			if name == "" {
				name = `""`
			}
			return nil, fieldErr(name, CodeUnknownField, "unknown field (want event_id, user_id, item_id, category_id, behavior, ts)")
		}
		if seen[field] {
			return nil, fieldErr(field, CodeMalformed, "given twice (%s)", k)
		}
		seen[field] = true
		if field == "ts" {
			ts, ferr := decodeTS(raw)
			if ferr != nil {
				return nil, ferr
			}
			ev.Ts = ts
			continue
		}
		s, ferr := decodeID(field, raw)
		if ferr != nil {
			return nil, ferr
		}
		switch field {
		case "event_id":
			ev.EventId = s
		case "user_id":
			ev.UserId = s
		case "item_id":
			ev.ItemId = s
		case "category_id":
			ev.CategoryId = s
		case "behavior":
			ev.Behavior = s
		}
	}
	if tok, err := d.Token(); err != nil || tok != json.Delim('}') {
		return nil, notObject
	}
	if !onlySpace(data[d.InputOffset():]) {
		return nil, fieldErr("event", CodeMalformed, "data after the JSON object")
	}
	return ev, nil
}

func onlySpace(b []byte) bool { return len(bytes.TrimSpace(b)) == 0 }

func decodeID(field string, raw json.RawMessage) (string, *FieldError) {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return "", nil
	case raw[0] == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fieldErr(field, CodeMalformed, "invalid JSON string")
		}
		// encoding/json replaces invalid UTF-8 (raw bytes or lone surrogate
		// escapes) with U+FFFD; reject instead of silently merging ids.
		if !validStringLiteral(raw) {
			return "", fieldErr(field, CodeInvalidUTF8, "not valid UTF-8")
		}
		return s, nil
	case field != "behavior" && (raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9'):
		if _, err := strconv.ParseInt(string(raw), 10, 64); err != nil {
			return "", fieldErr(field, CodeMalformed, "number %s is not an integer id", truncate(string(raw)))
		}
		return string(raw), nil
	}
	return "", fieldErr(field, CodeMalformed, "must be a string, got %s", truncate(string(raw)))
}

// validStringLiteral reports whether a JSON string literal is valid UTF-8
// and escapes no lone UTF-16 surrogate.
func validStringLiteral(raw []byte) bool {
	if !utf8.Valid(raw) {
		return false
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		i++
		if i >= len(raw) || raw[i] != 'u' {
			continue // a one-character escape such as \\ or \n
		}
		r, ok := hex4(raw[i+1:])
		if !ok {
			return false
		}
		i += 4
		switch {
		case r >= 0xd800 && r < 0xdc00: // high surrogate: a low one must follow
			if i+2 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' {
				return false
			}
			lo, ok := hex4(raw[i+3:])
			if !ok || lo < 0xdc00 || lo >= 0xe000 {
				return false
			}
			i += 6
		case r >= 0xdc00 && r < 0xe000:
			return false
		}
	}
	return true
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	v, err := strconv.ParseUint(string(b[:4]), 16, 32)
	return rune(v), err == nil
}

func decodeTS(raw json.RawMessage) (int64, *FieldError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	s := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, fieldErr("ts", CodeMalformed, "invalid JSON string")
		}
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t.UnixMilli(), nil
		}
	}
	ts, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fieldErr("ts", CodeMalformed, "%s is neither Unix milliseconds nor an RFC 3339 time", truncate(string(raw)))
	}
	return ts, nil
}

// RequestError is a problem with a whole ingest request, not one event.
type RequestError struct {
	Field  string
	Reason string
}

func (e *RequestError) Error() string { return e.Field + ": " + e.Reason }

// DecodeIngestRequest decodes the REST body {"events": [...]} with at most
// maxEvents events. Each element is decoded on its own: an element that is
// not a valid event yields a rejection at its index (in rejected), not an
// error for the whole request.
func DecodeIngestRequest(body []byte, maxEvents int) (events []*recsysv1.Event, index []int, rejected []*recsysv1.Rejection, err error) {
	var top map[string]json.RawMessage
	d := json.NewDecoder(bytes.NewReader(body))
	if derr := d.Decode(&top); derr != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(derr, &typeErr) {
			return nil, nil, nil, &RequestError{Field: "body", Reason: `must be a JSON object {"events": [...]}, got ` + typeErr.Value}
		}
		return nil, nil, nil, &RequestError{Field: "body", Reason: "invalid JSON: " + derr.Error()}
	}
	if !onlySpace(body[d.InputOffset():]) {
		return nil, nil, nil, &RequestError{Field: "body", Reason: "invalid JSON: data after the request object"}
	}
	for k := range top {
		if k != "events" {
			return nil, nil, nil, &RequestError{Field: "body", Reason: fmt.Sprintf("unknown field %s (want events)", truncate(strconv.Quote(k)))}
		}
	}
	var req struct{ Events []json.RawMessage }
	if raw, ok := top["events"]; ok && !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		if err := json.Unmarshal(raw, &req.Events); err != nil {
			reason := "must be an array of event objects"
			var typeErr *json.UnmarshalTypeError
			if errors.As(err, &typeErr) {
				reason += ", got " + typeErr.Value
			}
			return nil, nil, nil, &RequestError{Field: "events", Reason: reason}
		}
	}
	if req.Events == nil {
		return nil, nil, nil, &RequestError{Field: "events", Reason: "required"}
	}
	if len(req.Events) > maxEvents {
		return nil, nil, nil, &RequestError{Field: "events", Reason: fmt.Sprintf("batch of %d events exceeds the limit of %d", len(req.Events), maxEvents)}
	}
	for i, raw := range req.Events {
		ev, ferr := DecodeJSONEvent(raw)
		if ferr != nil {
			rejected = append(rejected, rejection(i, ferr))
			continue
		}
		events = append(events, ev)
		index = append(index, i)
	}
	return events, index, rejected, nil
}

func rejection(i int, err *FieldError) *recsysv1.Rejection {
	return &recsysv1.Rejection{Index: int32(i), Field: err.Field, Code: err.Code, Reason: err.Error()}
}

// DecodeTaobaoCSV decodes one row user_id,item_id,category_id,behavior,
// unix_seconds of the Taobao user-behavior data set.
func DecodeTaobaoCSV(line string) (*recsysv1.Event, *FieldError) {
	line = strings.TrimRight(line, "\r\n")
	parts := strings.Split(line, ",")
	if len(parts) != 5 {
		return nil, fieldErr("row", CodeMalformed, "has %d fields, want 5 (user_id,item_id,category_id,behavior,timestamp)", len(parts))
	}
	secs, err := strconv.ParseInt(parts[4], 10, 64)
	if err != nil {
		return nil, fieldErr("ts", CodeMalformed, "%q is not an integer Unix time in seconds", truncate(parts[4]))
	}
	if secs > 1<<42 || secs < -(1<<42) {
		return nil, fieldErr("ts", CodeMalformed, "%d is out of range", secs)
	}
	return &recsysv1.Event{
		UserId:     parts[0],
		ItemId:     parts[1],
		CategoryId: parts[2],
		Behavior:   parts[3],
		Ts:         secs * 1000,
	}, nil
}
