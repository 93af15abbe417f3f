package kafka

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater"
)

const topic = "events"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openStore(t *testing.T) *featurestore.Store {
	t.Helper()
	s, err := featurestore.Open("store", featurestore.Options{FS: vfs.NewMem(), Logger: quiet(), CacheBytes: 4 << 20, Clock: "event", Learner: testModels(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func cluster(t *testing.T, partitions int32) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic), kfake.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

const baseTS = int64(1511658000000) // 2017-11-26T01:00:00Z

// produce writes n valid events (users u0..u49), alternating JSON and
// protobuf values, and returns the end offset of every partition.
func produce(t *testing.T, addrs []string, n int, extra ...*kgo.Record) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for i := range n {
		ev := &recsysv1.Event{UserId: fmt.Sprintf("u%d", i%50), ItemId: fmt.Sprintf("i%d", i%97), CategoryId: "c" + strconv.Itoa(i%7), Behavior: "view", Ts: baseTS + int64(i)*1000}
		if i%2 == 0 {
			r, err := EventRecord(ev)
			if err != nil {
				t.Fatal(err)
			}
			recs = append(recs, r)
		} else {
			v := fmt.Sprintf(`{"user_id":%q,"item_id":%q,"category_id":%q,"behavior":"view","ts":%d}`, ev.UserId, ev.ItemId, ev.CategoryId, ev.Ts)
			recs = append(recs, &kgo.Record{Key: []byte(ev.UserId), Value: []byte(v)})
		}
	}
	recs = append(recs, extra...)
	end := map[int32]int64{}
	for _, r := range recs {
		if err := cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
		end[r.Partition] = max(end[r.Partition], r.Offset+1)
	}
	return end
}

func run(t *testing.T, store *featurestore.Store, addrs []string, group string, stop map[int32]int64) {
	t.Helper()
	c, err := New(store, Options{Brokers: addrs, Topic: topic, Group: group, StopAt: stop, Logger: quiet(), MaxBatch: 100})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatalf("consumer did not reach %v: %v", stop, ctx.Err())
	}
}

func positions(t *testing.T, s *featurestore.Store) map[int32]int64 {
	t.Helper()
	p, err := Positions(s, topic)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConsumeBadRecordsAndDeadLetterTopic(t *testing.T) {
	c := cluster(t, 3)
	addrs := c.ListenAddrs()
	future := &recsysv1.Event{UserId: "u5", ItemId: "i1", Behavior: "view", Ts: 4102444800000}
	ingestDead, err := DeadLetterRecord(&recsysv1.DeadLetter{Event: future, Code: updater.CodeFuture, Reason: "ts: in the future", ReceivedAt: timestamppb.New(time.UnixMilli(baseTS))})
	if err != nil {
		t.Fatal(err)
	}
	bogus, err := proto.Marshal(&recsysv1.DeadLetter{Event: future, Code: "made-up"})
	if err != nil {
		t.Fatal(err)
	}
	bad := []*kgo.Record{
		{Key: []byte("u1"), Value: []byte(`{"user_id":"u1",`)},                                      // undecodable JSON
		{Key: []byte("u1"), Value: []byte(`{"item_id":"i1","behavior":"view","ts":1511658000000}`)}, // missing user
		{Key: []byte("u2"), Value: []byte("x"), Headers: []kgo.RecordHeader{{Key: HeaderContentType, Value: []byte("text/csv")}}},
		{Key: []byte("u3"), Value: []byte{0xff, 0x01}, Headers: []kgo.RecordHeader{{Key: HeaderContentType, Value: []byte(ContentProtobuf)}}},
		// Late: u4's partition has seen 2017-11-26 already.
		{Key: []byte("u4"), Value: []byte(`{"user_id":"u4","item_id":"i1","behavior":"view","ts":1500000000000}`)},
		// A dead letter of ingest (Producer.PublishDeadLetters), and one
		// whose code is none of ingest's.
		ingestDead,
		{Key: []byte("u6"), Value: bogus, Headers: []kgo.RecordHeader{{Key: HeaderContentType, Value: []byte(ContentDeadLetter)}}},
	}
	end := produce(t, addrs, 500, bad...)
	// One valid event after the bad ones in the same partition as u1.
	store := openStore(t)
	run(t, store, addrs, "g1", end)

	st := store.Stats()
	if st.Events != 500 || st.Duplicates != 0 {
		t.Fatalf("events %d duplicates %d, want 500 and 0", st.Events, st.Duplicates)
	}
	if got := store.DeadLetterCount(); got != int64(len(bad)) {
		t.Fatalf("dead letters in store %d, want %d", got, len(bad))
	}
	if got := positions(t, store); fmt.Sprint(got) != fmt.Sprint(end) {
		t.Fatalf("positions %v, want %v", got, end)
	}
	// The dead letter of ingest is kept with its code and event.
	recs, err := store.DeadLetters(100)
	if err != nil {
		t.Fatal(err)
	}
	futures := 0
	for _, rec := range recs {
		var dl recsysv1.DeadLetter
		if err := proto.Unmarshal(rec, &dl); err != nil {
			t.Fatal(err)
		}
		if dl.Code == updater.CodeFuture && dl.GetEvent().GetUserId() == "u5" && strings.Contains(dl.Reason, "refused at ingest") {
			futures++
		}
	}
	if futures != 1 {
		t.Fatalf("dead letters of ingest kept: %d, want 1", futures)
	}

	// The dead-letter topic holds each bad record with its reason and
	// source position.
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics(topic+".dlq"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	reasons := map[string]int{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for n := 0; n < len(bad); {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("dead-letter topic: got %d records, want %d", n, len(bad))
		}
		fs.EachRecord(func(r *kgo.Record) {
			n++
			h := map[string]string{}
			for _, x := range r.Headers {
				h[x.Key] = string(x.Value)
			}
			if h[HeaderSourceTopic] != topic || h[HeaderSourcePartition] == "" || h[HeaderSourceOffset] == "" || h[HeaderError] == "" {
				t.Errorf("dead letter headers %v lack the source or the error", h)
			}
			reasons[h[HeaderReason]]++
		})
	}
	want := map[string]int{CodeUndecodable: 4, "missing": 1, "late": 1, "future": 1}
	if fmt.Sprint(reasons) != fmt.Sprint(want) {
		t.Fatalf("reasons %v, want %v", reasons, want)
	}
}

// TestResumeFromStoredOffsets stops half-way, then resumes; the second
// run starts where the store says, so no event is applied twice (there are
// no duplicates to skip) or skipped. A fresh store in the same group
// re-reads everything: the group's committed offsets are not used.
func TestResumeFromStoredOffsets(t *testing.T) {
	c := cluster(t, 4)
	addrs := c.ListenAddrs()
	end := produce(t, addrs, 2000)
	half := map[int32]int64{}
	for p, e := range end {
		half[p] = e / 2
	}
	store := openStore(t)
	run(t, store, addrs, "g", half)
	first := store.Stats().Events
	if first == 0 || first >= 2000 {
		t.Fatalf("first run applied %d events, want part of 2000", first)
	}
	run(t, store, addrs, "g", end)
	if st := store.Stats(); st.Events != 2000 || st.Duplicates != 0 {
		t.Fatalf("after resuming: events %d duplicates %d, want 2000 and 0", st.Events, st.Duplicates)
	}
	fresh := openStore(t)
	run(t, fresh, addrs, "g", end)
	if st := fresh.Stats(); st.Events != 2000 {
		t.Fatalf("fresh store in the same group applied %d events, want 2000 (it must not start at the committed offsets)", st.Events)
	}
}

// TestRebalanceHandsOverPartitions runs two consumers of one store in one
// group: the second joining revokes partitions from the first mid-stream
// (cooperative-sticky). Every event is applied once.
func TestRebalanceHandsOverPartitions(t *testing.T) {
	c := cluster(t, 6)
	addrs := c.ListenAddrs()
	end := produce(t, addrs, 6000)
	store := openStore(t)
	var g errgroup.Group
	var once sync.Once
	started := make(chan struct{})
	for i := range 2 {
		g.Go(func() error {
			if i == 1 {
				<-started
			}
			cons, err := New(store, Options{Brokers: addrs, Topic: topic, Group: "g", StopAt: end, Logger: quiet(), MaxBatch: 50})
			if err != nil {
				return err
			}
			if i == 0 {
				cons.OnApply(func(BatchInfo) { once.Do(func() { close(started) }) })
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := cons.Run(ctx); err != nil {
				return err
			}
			return ctx.Err()
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if st := store.Stats(); st.Events != 6000 || st.Duplicates != 0 {
		t.Fatalf("events %d duplicates %d, want 6000 and 0", st.Events, st.Duplicates)
	}
}

func TestProducerPublishes(t *testing.T) {
	c := cluster(t, 2)
	addrs := c.ListenAddrs()
	p, err := NewProducer(addrs, topic)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	evs := []*recsysv1.Event{{UserId: "a", ItemId: "i", Behavior: "view", Ts: baseTS}, {UserId: "b", ItemId: "i", Behavior: "purchase", Ts: baseTS + 1}}
	if err := p.Publish(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	end, err := EndOffsets(context.Background(), addrs, topic)
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t)
	run(t, store, addrs, "g", end)
	if got := store.Stats().Events; got != 2 {
		t.Fatalf("events %d, want 2", got)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{{Topic: "t"}, {Brokers: []string{"x"}}, {Brokers: []string{"x"}, Topic: "t", ContentType: "text/xml"}} {
		if _, err := New(nil, o); err == nil {
			t.Errorf("New(%+v): no error", o)
		}
	}
}

// testModels returns the incremental models with their defaults, for a
// store that learns as the server's does.
func testModels(t testing.TB) *models.Models {
	t.Helper()
	m, err := models.New(models.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}
