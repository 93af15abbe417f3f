package updater

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// FuzzProtoEvent: protobuf events from gRPC or the log never panic the
// validation, and what Normalize accepts round-trips through the log form.
func FuzzProtoEvent(f *testing.F) {
	for _, ev := range []*recsysv1.Event{
		{UserId: "u", ItemId: "i", Behavior: "view", Ts: 1_700_000_000_000},
		{EventId: "e", UserId: "u", ItemId: "i", CategoryId: "c", Behavior: "buy", Ts: 1_700_000_000_000},
		{UserId: "\xff", ItemId: "", Behavior: "click", Ts: -1},
	} {
		b, _ := proto.Marshal(ev)
		f.Add(b)
	}
	f.Add([]byte{0x0a, 0xff})
	now := time.UnixMilli(1_800_000_000_000)
	f.Fuzz(func(t *testing.T, data []byte) {
		var ev recsysv1.Event
		if proto.Unmarshal(data, &ev) != nil {
			return
		}
		norm, ferr := Normalize(&ev, now, 5*time.Minute)
		if ferr != nil {
			if ferr.Field == "" || ferr.Code == "" {
				t.Fatalf("rejection without field or code: %+v", ferr)
			}
			return
		}
		b, err := proto.Marshal(toProto(&norm))
		if err != nil {
			t.Fatal(err)
		}
		var back recsysv1.Event
		if err := proto.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		again, ferr := Normalize(&back, now, 5*time.Minute)
		if ferr != nil || again != norm {
			t.Fatalf("normalized event does not round-trip: %+v -> %+v (%v)", norm, again, ferr)
		}
	})
}
