package updater

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

var knownCodes = []string{CodeMissing, CodeTooLong, CodeInvalidUTF8, CodeControlCharacter, CodeUnknownBehavior,
	CodeTooOld, CodeFuture, CodeMalformed, CodeUnknownField, CodeReserved}

func TestDecodeJSONEvent(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *recsysv1.Event
	}{
		{"all fields", `{"event_id":"e1","user_id":"u1","item_id":"i1","category_id":"c1","behavior":"pv","ts":1700000000000}`,
			&recsysv1.Event{EventId: "e1", UserId: "u1", ItemId: "i1", CategoryId: "c1", Behavior: "pv", Ts: 1700000000000}},
		{"camelCase keys", `{"eventId":"e1","userId":"u1","itemId":"i1","categoryId":"c1","behavior":"buy","ts":1}`,
			&recsysv1.Event{EventId: "e1", UserId: "u1", ItemId: "i1", CategoryId: "c1", Behavior: "buy", Ts: 1}},
		{"integer ids", `{"user_id":123,"item_id":-5,"category_id":0,"event_id":9223372036854775807}`,
			&recsysv1.Event{UserId: "123", ItemId: "-5", CategoryId: "0", EventId: "9223372036854775807"}},
		{"ts digit string", `{"ts":"1700000000000"}`, &recsysv1.Event{Ts: 1700000000000}},
		{"ts RFC 3339", `{"ts":"2023-11-14T22:13:20Z"}`, &recsysv1.Event{Ts: 1700000000000}},
		{"ts RFC 3339 with fraction and zone", `{"ts":"2023-11-14T23:13:20.123+01:00"}`, &recsysv1.Event{Ts: 1700000000123}},
		{"ts negative", `{"ts":-1}`, &recsysv1.Event{Ts: -1}},
		{"nulls", `{"user_id":null,"item_id":null,"category_id":null,"event_id":null,"behavior":null,"ts":null}`, &recsysv1.Event{}},
		{"empty object", `{}`, &recsysv1.Event{}},
		{"whitespace", " \n{ \"user_id\" : \"u\" ,\t\"ts\" : 5 }\n ", &recsysv1.Event{UserId: "u", Ts: 5}},
		{"escapes", `{"user_id":"a\u00e9\"\\"}`, &recsysv1.Event{UserId: "aé\"\\"}},
		{"control escape kept for Normalize", `{"user_id":"a\u0000b"}`, &recsysv1.Event{UserId: "a\x00b"}},
		{"unicode", `{"item_id":"商品"}`, &recsysv1.Event{ItemId: "商品"}},
		{"replacement character literal", `{"item_id":"a�b"}`, &recsysv1.Event{ItemId: "a\uFFFDb"}},
		{"replacement character escape", `{"item_id":"a\ufffdb\uFFFD"}`, &recsysv1.Event{ItemId: "a\uFFFDb\uFFFD"}},
		{"surrogate pair", `{"item_id":"\ud83d\ude00"}`, &recsysv1.Event{ItemId: "😀"}},
		// No validation beyond the JSON shape.
		{"behavior not checked", `{"behavior":"click"}`, &recsysv1.Event{Behavior: "click"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ferr := DecodeJSONEvent([]byte(tc.in))
			if ferr != nil {
				t.Fatalf("DecodeJSONEvent(%s): %v", tc.in, ferr)
			}
			if !proto.Equal(got, tc.want) {
				t.Fatalf("DecodeJSONEvent(%s) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

func TestDecodeJSONEventErrors(t *testing.T) {
	longKey := strings.Repeat("k", 100)
	tests := []struct {
		name, in    string
		field, code string
	}{
		{"unknown field", `{"user_id":"u","user":"x"}`, "user", CodeUnknownField},
		// encoding/json would turn these into U+FFFD and merge distinct ids.
		{"invalid utf8 byte", "{\"user_id\":\"a\xffb\"}", "user_id", CodeInvalidUTF8},
		{"lone surrogate escape", `{"item_id":"\ud800"}`, "item_id", CodeInvalidUTF8},
		{"invalid utf8 next to a real U+FFFD", "{\"event_id\":\"\uFFFD\xff\"}", "event_id", CodeInvalidUTF8},
		{"unknown field case", `{"UserId":"u"}`, "UserId", CodeUnknownField},
		{"long unknown field truncated", `{"` + longKey + `":1}`, longKey[:64] + "...", CodeUnknownField},
		{"id bool", `{"user_id":true}`, "user_id", CodeMalformed},
		{"id float", `{"item_id":1.5}`, "item_id", CodeMalformed},
		{"id exponent", `{"item_id":1e3}`, "item_id", CodeMalformed},
		{"id too big for int64", `{"item_id":99999999999999999999}`, "item_id", CodeMalformed},
		{"id object", `{"category_id":{}}`, "category_id", CodeMalformed},
		{"id array", `{"event_id":["a"]}`, "event_id", CodeMalformed},
		{"behavior number", `{"behavior":1}`, "behavior", CodeMalformed},
		{"ts bool", `{"ts":true}`, "ts", CodeMalformed},
		{"ts float", `{"ts":1700000000000.5}`, "ts", CodeMalformed},
		{"ts exponent", `{"ts":1.7e12}`, "ts", CodeMalformed},
		{"ts overflow", `{"ts":9223372036854775808}`, "ts", CodeMalformed},
		{"ts word", `{"ts":"yesterday"}`, "ts", CodeMalformed},
		{"ts empty string", `{"ts":""}`, "ts", CodeMalformed},
		{"ts date only", `{"ts":"2023-11-14"}`, "ts", CodeMalformed},
		{"ts object", `{"ts":{}}`, "ts", CodeMalformed},
		{"array", `[]`, "event", CodeMalformed},
		{"string", `"x"`, "event", CodeMalformed},
		{"number", `1`, "event", CodeMalformed},
		{"null", `null`, "event", CodeMalformed},
		{"empty", ``, "event", CodeMalformed},
		{"blank", "  \n", "event", CodeMalformed},
		{"truncated", `{"user_id":"u"`, "event", CodeMalformed},
		{"missing value", `{"user_id":}`, "event", CodeMalformed},
		{"bad string", `{"user_id":"\x"}`, "event", CodeMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ferr := DecodeJSONEvent([]byte(tc.in))
			if ferr == nil {
				t.Fatalf("DecodeJSONEvent(%s) = %v, want %s error on %s", tc.in, got, tc.code, tc.field)
			}
			if got != nil {
				t.Errorf("DecodeJSONEvent returned an event with an error")
			}
			if ferr.Field != tc.field || ferr.Code != tc.code {
				t.Errorf("DecodeJSONEvent(%s) error = %s/%s (%v), want %s/%s", tc.in, ferr.Field, ferr.Code, ferr, tc.field, tc.code)
			}
		})
	}
}

// Keys that name the same field (user_id and userId), or a key given twice,
// must not be resolved by Go's random map iteration order.
func TestDecodeJSONEventAliasesDeterministic(t *testing.T) {
	in := []byte(`{"user_id":"a","userId":"b","item_id":"i"}`)
	first, ferr := DecodeJSONEvent(in)
	for range 100 {
		got, ferr2 := DecodeJSONEvent(in)
		if (ferr == nil) != (ferr2 == nil) || (ferr == nil && !proto.Equal(got, first)) {
			t.Fatalf("DecodeJSONEvent(%s) gave %v/%v, then %v/%v", in, first, ferr, got, ferr2)
		}
	}
}

// Data after the JSON object is an error, so an NDJSON line holding two
// objects (or a half-written one) is not accepted as the first object alone.
func TestDecodeJSONEventTrailingData(t *testing.T) {
	for _, in := range []string{`{"user_id":"a"} {"user_id":"b"}`, `{"user_id":"a"}garbage`, `{"user_id":"a"}}`} {
		if ev, ferr := DecodeJSONEvent([]byte(in)); ferr == nil {
			t.Errorf("DecodeJSONEvent(%s) = %v, want a malformed error", in, ev)
		}
	}
}

func TestDecodeIngestRequest(t *testing.T) {
	body := `{"events":[
		{"user_id":"a","item_id":"i","behavior":"view","ts":1700000000000},
		5,
		{"bogus":1},
		{"userId":"b","itemId":"j","behavior":"cart","ts":"2023-11-14T22:13:20Z"},
		null,
		{"ts":true},
		{}
	]}`
	events, index, rejected, err := DecodeIngestRequest([]byte(body), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 3 || !slices.Equal(index, []int{0, 3, 6}) {
		t.Fatalf("events %v at %v, want 3 at [0 3 6]", events, index)
	}
	if events[1].UserId != "b" || events[1].Ts != 1700000000000 {
		t.Errorf("events[1] = %v", events[1])
	}
	type rej struct {
		index       int32
		field, code string
	}
	var got []rej
	for _, r := range rejected {
		got = append(got, rej{r.Index, r.Field, r.Code})
		if !strings.HasPrefix(r.Reason, r.Field+": ") {
			t.Errorf("rejection reason %q does not start with its field", r.Reason)
		}
	}
	want := []rej{{1, "event", CodeMalformed}, {2, "bogus", CodeUnknownField}, {4, "event", CodeMalformed}, {5, "ts", CodeMalformed}}
	if !slices.Equal(got, want) {
		t.Errorf("rejections = %v, want %v", got, want)
	}

	// Exactly at the limit is fine; an empty list is a valid request.
	if ev, _, rj, err := DecodeIngestRequest([]byte(`{"events":[{},{}]}`), 2); err != nil || len(ev) != 2 || len(rj) != 0 {
		t.Errorf("batch at the limit = %d events, %v", len(ev), err)
	}
	if ev, ix, rj, err := DecodeIngestRequest([]byte(` {"events":[]} `), 2); err != nil || len(ev)+len(ix)+len(rj) != 0 {
		t.Errorf("empty batch = %v %v %v %v", ev, ix, rj, err)
	}
}

func TestDecodeIngestRequestErrors(t *testing.T) {
	tests := []struct {
		name, body string
		max        int
		field      string
		reason     string // substring
	}{
		{"malformed", `{"events":[`, 10, "body", "invalid JSON"},
		{"not JSON", `events=1`, 10, "body", "invalid JSON"},
		{"empty", ``, 10, "body", "invalid JSON"},
		{"array body", `[{}]`, 10, "body", "array"},
		{"events not an array", `{"events":{}}`, 10, "events", "array"},
		{"events a string", `{"events":"x"}`, 10, "events", "string"},
		{"unknown field", `{"events":[],"extra":1}`, 10, "body", `unknown field "extra"`},
		{"missing events", `{}`, 10, "events", "required"},
		{"null events", `{"events":null}`, 10, "events", "required"},
		{"null body", `null`, 10, "events", "required"},
		{"over the limit", `{"events":[{},{},{}]}`, 2, "events", "batch of 3 events exceeds the limit of 2"},
		{"trailing object", `{"events":[]} {"events":[]}`, 10, "body", "data after the request object"},
		{"trailing garbage", `{"events":[]} x`, 10, "body", "invalid JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			events, index, rejected, err := DecodeIngestRequest([]byte(tc.body), tc.max)
			var rerr *RequestError
			if !errors.As(err, &rerr) {
				t.Fatalf("DecodeIngestRequest(%s) error = %v, want a RequestError", tc.body, err)
			}
			if rerr.Field != tc.field || !strings.Contains(rerr.Reason, tc.reason) {
				t.Errorf("error = %s / %q, want %s / containing %q", rerr.Field, rerr.Reason, tc.field, tc.reason)
			}
			if !strings.HasPrefix(rerr.Error(), tc.field+": ") {
				t.Errorf("Error() = %q", rerr.Error())
			}
			if events != nil || index != nil || rejected != nil {
				t.Errorf("results with an error: %v %v %v", events, index, rejected)
			}
		})
	}
}

// An escaped backslash followed by "ufffd" must not hide a lone surrogate
// or an invalid byte.
func TestDecodeJSONEventInvalidUTF8Masked(t *testing.T) {
	for _, in := range []string{`{"user_id":"\\ufffd\ud800"}`, "{\"user_id\":\"\\\\ufffd\xff\"}"} {
		ev, ferr := DecodeJSONEvent([]byte(in))
		if ferr == nil || ferr.Code != CodeInvalidUTF8 {
			t.Errorf("DecodeJSONEvent(%s) = %v, %v; want invalid_utf8", in, ev, ferr)
		}
	}
}

// Trailing '}' or ']' after the request object and keys that match
// "events" only case-insensitively are errors.
func TestDecodeIngestRequestStrictness(t *testing.T) {
	for _, body := range []string{`{"events":[]}}`, `{"events":[]}]`, `{"EVENTS":[{}]}`} {
		if _, _, _, err := DecodeIngestRequest([]byte(body), 10); err == nil {
			t.Errorf("DecodeIngestRequest(%s) succeeded, want a RequestError", body)
		}
	}
}

func TestDecodeTaobaoCSV(t *testing.T) {
	tests := []struct {
		name, in string
		want     *recsysv1.Event
	}{
		{"row", "1,2268318,2520377,pv,1511544070", &recsysv1.Event{UserId: "1", ItemId: "2268318", CategoryId: "2520377", Behavior: "pv", Ts: 1511544070000}},
		{"LF", "1,2,3,buy,1511544070\n", &recsysv1.Event{UserId: "1", ItemId: "2", CategoryId: "3", Behavior: "buy", Ts: 1511544070000}},
		{"CRLF", "1,2,3,cart,1511544070\r\n", &recsysv1.Event{UserId: "1", ItemId: "2", CategoryId: "3", Behavior: "cart", Ts: 1511544070000}},
		{"empty fields pass to Normalize", ",,,,0", &recsysv1.Event{}},
		{"negative ts", "u,i,c,fav,-5", &recsysv1.Event{UserId: "u", ItemId: "i", CategoryId: "c", Behavior: "fav", Ts: -5000}},
		{"ts at the range limit", "u,i,c,pv,4398046511104", &recsysv1.Event{UserId: "u", ItemId: "i", CategoryId: "c", Behavior: "pv", Ts: 4398046511104000}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ferr := DecodeTaobaoCSV(tc.in)
			if ferr != nil {
				t.Fatalf("DecodeTaobaoCSV(%q): %v", tc.in, ferr)
			}
			if !proto.Equal(got, tc.want) {
				t.Fatalf("DecodeTaobaoCSV(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}

	errs := []struct {
		name, in, field string
	}{
		{"four fields", "1,2,3,pv", "row"},
		{"six fields", "1,2,3,pv,1511544070,x", "row"},
		{"empty line", "", "row"},
		{"CRLF only", "\r\n", "row"},
		{"tab separated", "1\t2\t3\tpv\t1511544070", "row"},
		{"ts word", "1,2,3,pv,abc", "ts"},
		{"ts float", "1,2,3,pv,1511544070.5", "ts"},
		{"ts empty", "1,2,3,pv,", "ts"},
		{"ts spaces", "1,2,3,pv, 1511544070", "ts"},
		{"ts with CR inside", "1,2,3,pv,15115\r44070", "ts"},
		{"ts overflow int64", "1,2,3,pv,99999999999999999999", "ts"},
		{"ts out of range", "1,2,3,pv,4398046511105", "ts"},
		{"ts out of range negative", "1,2,3,pv,-4398046511105", "ts"},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			got, ferr := DecodeTaobaoCSV(tc.in)
			if ferr == nil {
				t.Fatalf("DecodeTaobaoCSV(%q) = %v, want an error on %s", tc.in, got, tc.field)
			}
			if got != nil || ferr.Field != tc.field || ferr.Code != CodeMalformed {
				t.Errorf("DecodeTaobaoCSV(%q) = %v, %s/%s; want nil, %s/malformed", tc.in, got, ferr.Field, ferr.Code, tc.field)
			}
		})
	}

	// A decoded Taobao row in seconds passes Normalize as milliseconds.
	ev, ferr := DecodeTaobaoCSV("1,2,3,pv,1511544070\r\n")
	if ferr != nil {
		t.Fatal(ferr)
	}
	if norm, ferr := Normalize(ev, testNow, testSkew); ferr != nil || norm.TS != 1511544070000 {
		t.Errorf("Normalize(taobao row) = %+v, %v", norm, ferr)
	}
}

// checkFieldError checks the shape of an error from a decoder.
func checkFieldError(t *testing.T, ferr *FieldError) {
	t.Helper()
	// An empty JSON key is reported as an unknown field named "" (found by
	// the fuzzer: testdata/fuzz/FuzzDecodeJSONEvent/dc600271e2e08ad4).
	if (ferr.Field == "" && ferr.Code != CodeUnknownField) || !slices.Contains(knownCodes, ferr.Code) || ferr.Reason == "" {
		t.Fatalf("bad FieldError %+v", ferr)
	}
	if len(ferr.Field) > 64+len("...") {
		t.Fatalf("field name of %d bytes is not truncated", len(ferr.Field))
	}
}

// checkNormalize runs Normalize on a decoded event and, when it accepts it,
// checks the result and that its log form reads back the same.
func checkNormalize(t *testing.T, ev *recsysv1.Event) {
	t.Helper()
	norm, ferr := Normalize(ev, testNow, testSkew)
	if ferr != nil {
		checkFieldError(t, ferr)
		return
	}
	for _, id := range []string{norm.ID, norm.UserID, norm.ItemID} {
		if id == "" || len(id) > MaxIDBytes || !utf8.ValidString(id) || strings.ContainsFunc(id, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			t.Fatalf("Normalize accepted a bad id %q in %+v", id, norm)
		}
	}
	if norm.TS < minTS || norm.TS > testNow.Add(testSkew).UnixMilli() {
		t.Fatalf("Normalize accepted ts %d", norm.TS)
	}
	b, err := proto.Marshal(toProto(&norm))
	if err != nil {
		t.Fatal(err)
	}
	var back recsysv1.Event
	if err := proto.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if again, ferr := Normalize(&back, time.UnixMilli(back.Ts), 0); ferr != nil || again != norm {
		t.Fatalf("log round trip: %+v, %v; want %+v", again, ferr, norm)
	}
}

func FuzzDecodeJSONEvent(f *testing.F) {
	for _, s := range []string{
		`{"user_id":"u1","item_id":"i1","category_id":"c1","behavior":"pv","ts":1767300000000}`,
		`{"userId":7,"itemId":-1,"behavior":"buy","ts":"2026-01-02T10:00:00Z"}`,
		`{"user_id":null,"ts":"1767300000000"}`,
		`{"bogus":1}`,
		`[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, ferr := DecodeJSONEvent(data)
		if (ev == nil) == (ferr == nil) {
			t.Fatalf("DecodeJSONEvent(%q) = %v, %v: want exactly one", data, ev, ferr)
		}
		if ferr != nil {
			checkFieldError(t, ferr)
			return
		}
		checkNormalize(t, ev)
	})
}

func FuzzDecodeTaobaoCSV(f *testing.F) {
	for _, s := range []string{
		"1,2268318,2520377,pv,1511544070",
		"1,2,3,buy,1767300000\r\n",
		"a,b,,fav,1767300000\n",
		"1,2,3,pv",
		"1,2,3,pv,x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		ev, ferr := DecodeTaobaoCSV(line)
		if (ev == nil) == (ferr == nil) {
			t.Fatalf("DecodeTaobaoCSV(%q) = %v, %v: want exactly one", line, ev, ferr)
		}
		if ferr != nil {
			checkFieldError(t, ferr)
			return
		}
		if ev.Ts%1000 != 0 {
			t.Fatalf("ts %d is not whole seconds", ev.Ts)
		}
		checkNormalize(t, ev)
	})
}

const fuzzMaxEvents = 50

func FuzzDecodeIngestRequest(f *testing.F) {
	for _, s := range []string{
		`{"events":[{"user_id":"u","item_id":"i","behavior":"view","ts":1767300000000}]}`,
		`{"events":[5,null,{"x":1},{}]}`,
		`{"events":[]}`,
		`{"events":{}}`,
		`{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		events, index, rejected, err := DecodeIngestRequest(body, fuzzMaxEvents)
		if err != nil {
			var rerr *RequestError
			if !errors.As(err, &rerr) || rerr.Field == "" {
				t.Fatalf("error %v is not a RequestError", err)
			}
			if events != nil || index != nil || rejected != nil {
				t.Fatalf("results with an error")
			}
			return
		}
		// Count the elements independently.
		var req struct{ Events []json.RawMessage }
		d := json.NewDecoder(bytes.NewReader(body))
		if derr := d.Decode(&req); derr != nil {
			t.Fatalf("request accepted but does not decode: %v", derr)
		}
		n := len(req.Events)
		if n > fuzzMaxEvents {
			t.Fatalf("%d events accepted over the limit %d", n, fuzzMaxEvents)
		}
		if len(events)+len(rejected) != n || len(index) != len(events) {
			t.Fatalf("%d elements gave %d events (%d indexes) and %d rejections", n, len(events), len(index), len(rejected))
		}
		// Each element is in exactly one list, in order.
		pos := make([]int, 0, n)
		pos = append(pos, index...)
		for _, r := range rejected {
			pos = append(pos, int(r.Index))
			if (r.Field == "" && r.Code != CodeUnknownField) || !slices.Contains(knownCodes, r.Code) {
				t.Fatalf("bad rejection %v", r)
			}
		}
		slices.Sort(pos)
		for i, p := range pos {
			if p != i {
				t.Fatalf("indexes %v and rejections %v do not cover 0..%d once each", index, rejected, n-1)
			}
		}
		if !slices.IsSorted(index) {
			t.Fatalf("indexes not in order: %v", index)
		}
		for i, ev := range events {
			if ev == nil {
				t.Fatalf("event %d is nil", i)
			}
			checkNormalize(t, ev)
		}
	})
}

// The seed corpora in testdata must stay parseable and interesting: a quick
// check that each target has some.
func TestFuzzCorporaPresent(t *testing.T) {
	for _, name := range []string{"FuzzDecodeJSONEvent", "FuzzDecodeTaobaoCSV", "FuzzDecodeIngestRequest"} {
		matches, err := filepath.Glob("testdata/fuzz/" + name + "/*")
		if err != nil || len(matches) < 5 {
			t.Errorf("%s: %d seed files (%v), want at least 5", name, len(matches), err)
		}
	}
}
