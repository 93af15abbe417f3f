package kafka

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// Producer publishes events to a topic: keyed by user id, protobuf values,
// acks=all, idempotent.
type Producer struct {
	cl    *kgo.Client
	topic string
}

// NewProducer returns a Producer to topic through brokers. extra options
// are appended (tests and tools tune linger and batching).
func NewProducer(brokers []string, topic string, extra ...kgo.Opt) (*Producer, error) {
	if len(brokers) == 0 {
		return nil, ErrNoBrokers
	}
	if topic == "" {
		return nil, ErrNoTopic
	}
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.DefaultProduceTopic(topic),
		kgo.RequiredAcks(kgo.AllISRAcks()), // idempotence is on by default with acks=all
	}, extra...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	return &Producer{cl: cl, topic: topic}, nil
}

// EventRecord is the record of one event: key user id, protobuf value.
func EventRecord(ev *recsysv1.Event) (*kgo.Record, error) {
	v, err := proto.Marshal(ev)
	if err != nil {
		return nil, err
	}
	return &kgo.Record{Key: []byte(ev.UserId), Value: v, Headers: []kgo.RecordHeader{{Key: HeaderContentType, Value: []byte(ContentProtobuf)}}}, nil
}

// Publish produces events and returns once the broker has acknowledged
// all of them (or the first error).
func (p *Producer) Publish(ctx context.Context, events []*recsysv1.Event) error {
	recs := make([]*kgo.Record, len(events))
	for i, ev := range events {
		r, err := EventRecord(ev)
		if err != nil {
			return fmt.Errorf("publish: encode event %d: %w", i, err)
		}
		recs[i] = r
	}
	if err := p.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("publish to %s: %w", p.topic, err)
	}
	return nil
}

// DeadLetterRecord is the record of a dead letter of ingest (an event
// refused as from the future): key the event's user id, so it goes to the
// user's partition, value the protobuf DeadLetter, content type
// ContentDeadLetter.
func DeadLetterRecord(dl *recsysv1.DeadLetter) (*kgo.Record, error) {
	v, err := proto.Marshal(dl)
	if err != nil {
		return nil, err
	}
	return &kgo.Record{Key: []byte(dl.GetEvent().GetUserId()), Value: v, Headers: []kgo.RecordHeader{{Key: HeaderContentType, Value: []byte(ContentDeadLetter)}}}, nil
}

// PublishDeadLetters produces the dead letters of ingest to the topic,
// beside the events: the consumer keeps them in the store exactly once
// with the state (and sends them to the dead-letter topic), as the
// embedded log does with its own. It returns once the broker has
// acknowledged all of them.
func (p *Producer) PublishDeadLetters(ctx context.Context, dead []*recsysv1.DeadLetter) error {
	recs := make([]*kgo.Record, len(dead))
	for i, dl := range dead {
		r, err := DeadLetterRecord(dl)
		if err != nil {
			return fmt.Errorf("publish: encode dead letter %d: %w", i, err)
		}
		recs[i] = r
	}
	if err := p.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("publish to %s: %w", p.topic, err)
	}
	return nil
}

// Close flushes nothing (Publish is synchronous) and closes the client. It
// is safe to call twice.
func (p *Producer) Close() { p.cl.Close() }
