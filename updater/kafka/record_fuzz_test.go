package kafka

import (
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// FuzzKafkaRecord feeds arbitrary record values and content-type headers to
// the consumer's decoder: it never panics, a rejection always has a code
// and a reason, and an accepted record is a valid event within the
// partition's watermark.
func FuzzKafkaRecord(f *testing.F) {
	good := `{"user_id":"u1","item_id":"i1","category_id":"c1","behavior":"view","ts":1700000000000}`
	pb, err := proto.Marshal(&recsysv1.Event{UserId: "u", ItemId: "i", Behavior: "cart", Ts: 1700000000000})
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(good), "", int64(0))
	f.Add([]byte(good), "application/json", int64(1700000000000))
	f.Add(pb, "application/x-protobuf", int64(0))
	f.Add(pb, "application/json", int64(1800000000000))
	f.Add([]byte(`{"user_id":"u1"`), "text/plain", int64(0))
	f.Add([]byte{0xff, 0x00, 0x12}, "application/x-protobuf", int64(0))
	dead, _ := proto.Marshal(&recsysv1.DeadLetter{Event: &recsysv1.Event{UserId: "u1"}, Code: "future", Reason: "ts: in the future"})
	f.Add(dead, ContentDeadLetter, int64(0))
	f.Add(pb, ContentDeadLetter, int64(0))
	opts := Options{Brokers: []string{"127.0.0.1:1"}, Topic: "events"}
	if err := opts.ensureDefaults(); err != nil {
		f.Fatal(err)
	}
	c := &Consumer{opts: opts}
	now := time.UnixMilli(1700000000000 + 60_000)
	f.Fuzz(func(t *testing.T, value []byte, contentType string, partitionMaxTS int64) {
		r := &kgo.Record{Value: value}
		if contentType != "" {
			r.Headers = []kgo.RecordHeader{{Key: HeaderContentType, Value: []byte(contentType)}}
		}
		pos := &position{maxTS: max(partitionMaxTS, 0)}
		before := pos.maxTS
		d, code, err := c.decode(r, pos, now)
		if err != nil {
			if code == "" || strings.TrimSpace(err.Error()) == "" {
				t.Fatalf("rejection without code or reason: code %q, err %v", code, err)
			}
			if pos.maxTS != before {
				t.Fatalf("a rejected record moved the watermark from %d to %d", before, pos.maxTS)
			}
			return
		}
		ev := d.norm
		if ev.UserID == "" || ev.ItemID == "" || ev.ID == "" {
			t.Fatalf("accepted an event without ids: %+v", ev)
		}
		if ev.TS > now.UnixMilli()+opts.MaxFutureSkew.Milliseconds() {
			t.Fatalf("accepted a future event: %d", ev.TS)
		}
		if before != 0 && ev.TS < before-opts.AllowedLateness.Milliseconds() {
			t.Fatalf("accepted a late event: %d < watermark of %d", ev.TS, before)
		}
		if pos.maxTS < before || pos.maxTS < ev.TS {
			t.Fatalf("watermark base %d after accepting ts %d (was %d)", pos.maxTS, ev.TS, before)
		}
	})
}
