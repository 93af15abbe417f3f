package updater

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/streamrec/recsys/featurestore"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

var (
	testNow  = time.Date(2026, 1, 2, 12, 0, 0, 0, time.UTC)
	testSkew = 5 * time.Minute
	testTS   = testNow.Add(-time.Hour).UnixMilli()
)

func validEvent() *recsysv1.Event {
	return &recsysv1.Event{UserId: "u1", ItemId: "i1", CategoryId: "c1", Behavior: "view", Ts: testTS}
}

func TestNormalize(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	tests := []struct {
		name   string
		mod    func(*recsysv1.Event)
		field  string // "" means valid
		code   string
		behav  featurestore.Behavior
		wantID string // checked when not empty
	}{
		{name: "valid", mod: func(*recsysv1.Event) {}},
		{name: "nil event", mod: nil, field: "event", code: CodeMissing},
		{name: "missing user", mod: func(e *recsysv1.Event) { e.UserId = "" }, field: "user_id", code: CodeMissing},
		{name: "missing item", mod: func(e *recsysv1.Event) { e.ItemId = "" }, field: "item_id", code: CodeMissing},
		{name: "missing category is fine", mod: func(e *recsysv1.Event) { e.CategoryId = "" }},
		{name: "missing behavior", mod: func(e *recsysv1.Event) { e.Behavior = "" }, field: "behavior", code: CodeMissing},
		{name: "missing ts", mod: func(e *recsysv1.Event) { e.Ts = 0 }, field: "ts", code: CodeMissing},
		{name: "user 256 bytes", mod: func(e *recsysv1.Event) { e.UserId = long(256) }},
		{name: "user 257 bytes", mod: func(e *recsysv1.Event) { e.UserId = long(257) }, field: "user_id", code: CodeTooLong},
		{name: "item 257 bytes", mod: func(e *recsysv1.Event) { e.ItemId = long(257) }, field: "item_id", code: CodeTooLong},
		{name: "category 256 bytes", mod: func(e *recsysv1.Event) { e.CategoryId = long(256) }},
		{name: "category 257 bytes", mod: func(e *recsysv1.Event) { e.CategoryId = long(257) }, field: "category_id", code: CodeTooLong},
		{name: "event id 256 bytes", mod: func(e *recsysv1.Event) { e.EventId = long(256) }, wantID: long(256)},
		{name: "event id 257 bytes", mod: func(e *recsysv1.Event) { e.EventId = long(257) }, field: "event_id", code: CodeTooLong},
		// 128 two-byte runes are 256 bytes: the limit is in bytes.
		{name: "multibyte 256 bytes", mod: func(e *recsysv1.Event) { e.UserId = strings.Repeat("é", 128) }},
		{name: "multibyte 258 bytes", mod: func(e *recsysv1.Event) { e.UserId = strings.Repeat("é", 129) }, field: "user_id", code: CodeTooLong},
		{name: "too long wins over utf8", mod: func(e *recsysv1.Event) { e.UserId = long(300) + "\xff" }, field: "user_id", code: CodeTooLong},
		{name: "invalid utf8 user", mod: func(e *recsysv1.Event) { e.UserId = "a\xffb" }, field: "user_id", code: CodeInvalidUTF8},
		{name: "invalid utf8 category", mod: func(e *recsysv1.Event) { e.CategoryId = "\xc3" }, field: "category_id", code: CodeInvalidUTF8},
		{name: "invalid utf8 event id", mod: func(e *recsysv1.Event) { e.EventId = "\xed\xa0\x80" }, field: "event_id", code: CodeInvalidUTF8},
		{name: "NUL in item", mod: func(e *recsysv1.Event) { e.ItemId = "a\x00b" }, field: "item_id", code: CodeControlCharacter},
		{name: "tab in user", mod: func(e *recsysv1.Event) { e.UserId = "a\tb" }, field: "user_id", code: CodeControlCharacter},
		{name: "newline in category", mod: func(e *recsysv1.Event) { e.CategoryId = "c\n" }, field: "category_id", code: CodeControlCharacter},
		{name: "DEL in event id", mod: func(e *recsysv1.Event) { e.EventId = "\x7f" }, field: "event_id", code: CodeControlCharacter},
		{name: "unit separator", mod: func(e *recsysv1.Event) { e.UserId = "\x1f" }, field: "user_id", code: CodeControlCharacter},
		{name: "dot user", mod: func(e *recsysv1.Event) { e.UserId = "." }, field: "user_id", code: CodeReserved},
		{name: "dot-dot item", mod: func(e *recsysv1.Event) { e.ItemId = ".." }, field: "item_id", code: CodeReserved},
		{name: "dot-dot category", mod: func(e *recsysv1.Event) { e.CategoryId = ".." }, field: "category_id", code: CodeReserved},
		{name: "three dots are an id", mod: func(e *recsysv1.Event) { e.UserId = "..." }},
		{name: "space and unicode are fine", mod: func(e *recsysv1.Event) { e.UserId = "a b/ü\u00a0✓" }},
		{name: "unknown behavior", mod: func(e *recsysv1.Event) { e.Behavior = "click" }, field: "behavior", code: CodeUnknownBehavior},
		{name: "behavior is case sensitive", mod: func(e *recsysv1.Event) { e.Behavior = "View" }, field: "behavior", code: CodeUnknownBehavior},
		{name: "behavior with space", mod: func(e *recsysv1.Event) { e.Behavior = " view" }, field: "behavior", code: CodeUnknownBehavior},
		{name: "pv alias", mod: func(e *recsysv1.Event) { e.Behavior = "pv" }, behav: featurestore.BehaviorView},
		{name: "buy alias", mod: func(e *recsysv1.Event) { e.Behavior = "buy" }, behav: featurestore.BehaviorPurchase},
		{name: "purchase", mod: func(e *recsysv1.Event) { e.Behavior = "purchase" }, behav: featurestore.BehaviorPurchase},
		{name: "cart", mod: func(e *recsysv1.Event) { e.Behavior = "cart" }, behav: featurestore.BehaviorCart},
		{name: "fav", mod: func(e *recsysv1.Event) { e.Behavior = "fav" }, behav: featurestore.BehaviorFav},
		{name: "ts in seconds is too old", mod: func(e *recsysv1.Event) { e.Ts = testNow.Unix() }, field: "ts", code: CodeTooOld},
		{name: "ts in seconds of 2023 is too old", mod: func(e *recsysv1.Event) { e.Ts = 1_700_000_000 }, field: "ts", code: CodeTooOld},
		{name: "ts in seconds of the year 2900 is too old", mod: func(e *recsysv1.Event) { e.Ts = 29_348_006_400 }, field: "ts", code: CodeTooOld},
		{name: "ts in 1970-06", mod: func(e *recsysv1.Event) { e.Ts = 13_046_400_000 }, field: "ts", code: CodeTooOld},
		{name: "ts just before 1971", mod: func(e *recsysv1.Event) { e.Ts = minTS - 1 }, field: "ts", code: CodeTooOld},
		{name: "ts at 1971", mod: func(e *recsysv1.Event) { e.Ts = minTS }},
		{name: "ts in 1975", mod: func(e *recsysv1.Event) { e.Ts = 157_766_400_000 }},
		{name: "ts in 1999", mod: func(e *recsysv1.Event) { e.Ts = 946_684_799_999 }},
		{name: "negative ts", mod: func(e *recsysv1.Event) { e.Ts = -1 }, field: "ts", code: CodeTooOld},
		{name: "ts at the skew limit", mod: func(e *recsysv1.Event) { e.Ts = testNow.Add(testSkew).UnixMilli() }},
		{name: "ts past the skew limit", mod: func(e *recsysv1.Event) { e.Ts = testNow.Add(testSkew).UnixMilli() + 1 }, field: "ts", code: CodeFuture},
		{name: "ts far future", mod: func(e *recsysv1.Event) { e.Ts = 1 << 62 }, field: "ts", code: CodeFuture},
		{name: "given event id kept", mod: func(e *recsysv1.Event) { e.EventId = "my-id" }, wantID: "my-id"},
		// Fields are checked in order: user_id first.
		{name: "first bad field reported", mod: func(e *recsysv1.Event) { e.UserId, e.ItemId, e.Behavior = "", "", "x" }, field: "user_id", code: CodeMissing},
	}
	derived := regexp.MustCompile(`^h:[0-9a-f]{32}$`)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var in *recsysv1.Event
			if tc.mod != nil {
				in = validEvent()
				tc.mod(in)
			}
			var before *recsysv1.Event
			if in != nil {
				before = proto.Clone(in).(*recsysv1.Event)
			}
			got, ferr := Normalize(in, testNow, testSkew)
			if in != nil && !proto.Equal(in, before) {
				t.Errorf("Normalize modified its input: %v", in)
			}
			if tc.field != "" {
				if ferr == nil {
					t.Fatalf("Normalize = %+v, want %s error on %s", got, tc.code, tc.field)
				}
				if ferr.Field != tc.field || ferr.Code != tc.code {
					t.Fatalf("error = %s/%s (%v), want %s/%s", ferr.Field, ferr.Code, ferr, tc.field, tc.code)
				}
				if !strings.HasPrefix(ferr.Error(), tc.field+": ") || ferr.Reason == "" {
					t.Errorf("Error() = %q, want it to start with the field and give a reason", ferr.Error())
				}
				if got != (featurestore.Event{}) {
					t.Errorf("rejected event returned %+v", got)
				}
				return
			}
			if ferr != nil {
				t.Fatalf("Normalize: %v (code %s)", ferr, ferr.Code)
			}
			if got.UserID != in.UserId || got.ItemID != in.ItemId || got.CategoryID != in.CategoryId || got.TS != in.Ts || got.Behavior != tc.behav {
				t.Errorf("Normalize = %+v from %v", got, in)
			}
			switch {
			case tc.wantID != "" && got.ID != tc.wantID:
				t.Errorf("ID = %q, want %q", got.ID, tc.wantID)
			case tc.wantID == "" && (!derived.MatchString(got.ID) || got.ID != DeriveID(&got)):
				t.Errorf("ID = %q, want the derived id %q", got.ID, DeriveID(&got))
			}
		})
	}
}

// Seconds sent as milliseconds are refused with a message that says so;
// the floor is 1971-01-01, so that seconds of any date until about 2969 are
// caught.
func TestNormalizeSecondsMessage(t *testing.T) {
	if got := time.UnixMilli(minTS).UTC(); !got.Equal(time.Date(1971, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("minTS is %s, want 1971-01-01", got)
	}
	if last := time.Unix(minTS-1, 0).UTC(); last.Year() != 2969 {
		t.Errorf("the last date whose seconds are caught is %s, want one in 2969", last)
	}
	in := validEvent()
	in.Ts = 1_700_000_000
	_, ferr := Normalize(in, testNow, testSkew)
	if want := "ts: 1700000000 is before 1971-01-01 (Unix milliseconds expected, not seconds)"; ferr == nil || ferr.Error() != want {
		t.Fatalf("Normalize(ts 1700000000) = %v, want %q", ferr, want)
	}
}

func TestNormalizeUnknownBehaviorTruncated(t *testing.T) {
	e := validEvent()
	e.Behavior = strings.Repeat("z", 1000)
	_, ferr := Normalize(e, testNow, testSkew)
	if ferr == nil || ferr.Code != CodeUnknownBehavior || len(ferr.Reason) > 200 {
		t.Fatalf("error = %v", ferr)
	}
}

func TestDeriveID(t *testing.T) {
	base := featurestore.Event{UserID: "u", ItemID: "i", CategoryID: "c", Behavior: featurestore.BehaviorView, TS: testTS}
	id := DeriveID(&base)
	if again := DeriveID(&base); again != id {
		t.Fatalf("DeriveID not deterministic: %q vs %q", id, again)
	}
	// The id ignores a given ID: it is a function of the content.
	withID := base
	withID.ID = "something"
	if DeriveID(&withID) != id {
		t.Errorf("DeriveID depends on ID")
	}
	variants := map[string]featurestore.Event{}
	add := func(name string, mod func(*featurestore.Event)) {
		e := base
		mod(&e)
		variants[name] = e
	}
	add("user", func(e *featurestore.Event) { e.UserID = "v" })
	add("item", func(e *featurestore.Event) { e.ItemID = "j" })
	add("category", func(e *featurestore.Event) { e.CategoryID = "d" })
	add("no category", func(e *featurestore.Event) { e.CategoryID = "" })
	add("behavior", func(e *featurestore.Event) { e.Behavior = featurestore.BehaviorCart })
	add("ts+1", func(e *featurestore.Event) { e.TS++ })
	add("ts-1", func(e *featurestore.Event) { e.TS-- })
	// Field boundaries matter: moving a byte from one field to the next
	// is a different event.
	add("shift user/item", func(e *featurestore.Event) { e.UserID, e.ItemID = "ui", "" })
	add("shift item/category", func(e *featurestore.Event) { e.ItemID, e.CategoryID = "", "ic" })
	seen := map[string]string{id: "base"}
	for name, e := range variants {
		got := DeriveID(&e)
		if prev, dup := seen[got]; dup {
			t.Errorf("DeriveID(%s) = DeriveID(%s) = %q", name, prev, got)
		}
		seen[got] = name
	}

	// Behavior aliases are one event.
	a, b := validEvent(), validEvent()
	a.Behavior, b.Behavior = "pv", "view"
	na, _ := Normalize(a, testNow, testSkew)
	nb, _ := Normalize(b, testNow, testSkew)
	if na.ID != nb.ID {
		t.Errorf("pv and view derive different ids: %q vs %q", na.ID, nb.ID)
	}
	a.Behavior, b.Behavior = "buy", "purchase"
	na, _ = Normalize(a, testNow, testSkew)
	nb, _ = Normalize(b, testNow, testSkew)
	if na.ID != nb.ID {
		t.Errorf("buy and purchase derive different ids: %q vs %q", na.ID, nb.ID)
	}
}

// What Ingest writes to the log is what Run reads back: the log form of a
// normalized event normalizes to the same event at its own time.
func TestLogFormRoundTrip(t *testing.T) {
	for _, mod := range []func(*recsysv1.Event){
		func(*recsysv1.Event) {},
		func(e *recsysv1.Event) { e.Behavior, e.CategoryId = "buy", "" },
		func(e *recsysv1.Event) { e.EventId = "given" },
		func(e *recsysv1.Event) { e.Ts = testNow.Add(testSkew).UnixMilli() },
	} {
		in := validEvent()
		mod(in)
		norm, ferr := Normalize(in, testNow, testSkew)
		if ferr != nil {
			t.Fatal(ferr)
		}
		b, err := proto.Marshal(toProto(&norm))
		if err != nil {
			t.Fatal(err)
		}
		var back recsysv1.Event
		if err := proto.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		again, ferr := Normalize(&back, time.UnixMilli(back.Ts), 0)
		if ferr != nil || again != norm {
			t.Errorf("log round trip of %v = %+v, %v; want %+v", in, again, ferr, norm)
		}
	}
}

// An event is Derived when its id is the hash of its content: absent (and
// derived here), or sent in the derived form by the log or a Kafka record.
// An id that only looks derived is the client's.
func TestNormalizeDerived(t *testing.T) {
	ev := validEvent()
	ev.EventId = ""
	norm, ferr := Normalize(ev, testNow, testSkew)
	if ferr != nil || !norm.Derived {
		t.Fatalf("Normalize without id = %+v, %v; want Derived", norm, ferr)
	}
	for _, tc := range []struct {
		id      string
		derived bool
	}{
		{norm.ID, true},
		{"h:" + strings.Repeat("0", 32), false},
		{"h:x", false},
		{"client-1", false},
	} {
		ev.EventId = tc.id
		got, ferr := Normalize(ev, testNow, testSkew)
		if ferr != nil || got.Derived != tc.derived || got.ID != tc.id {
			t.Errorf("Normalize(event_id %q) = %+v, %v; want Derived %v", tc.id, got, ferr, tc.derived)
		}
	}
}
