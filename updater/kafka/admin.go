package kafka

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// EndOffsets returns the end offset (the offset the next record will get)
// of every partition of topic.
func EndOffsets(ctx context.Context, brokers []string, topic string) (map[int32]int64, error) {
	return listOffsets(ctx, brokers, topic, func(adm *kadm.Client) (kadm.ListedOffsets, error) {
		return adm.ListEndOffsets(ctx, topic)
	})
}

// OffsetsAfter returns, for every partition of topic, the offset of the
// first record with a timestamp at or after ms (the end offset if none).
func OffsetsAfter(ctx context.Context, brokers []string, topic string, ms int64) (map[int32]int64, error) {
	return listOffsets(ctx, brokers, topic, func(adm *kadm.Client) (kadm.ListedOffsets, error) {
		return adm.ListOffsetsAfterMilli(ctx, ms, topic)
	})
}

func listOffsets(ctx context.Context, brokers []string, topic string, list func(*kadm.Client) (kadm.ListedOffsets, error)) (map[int32]int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, fmt.Errorf("kafka admin: %w", err)
	}
	defer cl.Close()
	listed, err := list(kadm.NewClient(cl))
	if err != nil {
		return nil, fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	out := map[int32]int64{}
	var errs []error
	listed.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			errs = append(errs, fmt.Errorf("list offsets of %s/%d: %w", o.Topic, o.Partition, o.Err))
			return
		}
		out[o.Partition] = o.Offset
	})
	if len(out) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("list offsets of %s: %w", topic, kerr.UnknownTopicOrPartition))
	}
	return out, errors.Join(errs...)
}

// CreateTopic creates topic with the given partitions (replication factor
// 1 on a single broker, else the broker's default); an existing topic is
// left as it is.
func CreateTopic(ctx context.Context, brokers []string, topic string, partitions int32) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return fmt.Errorf("kafka admin: %w", err)
	}
	defer cl.Close()
	res, err := kadm.NewClient(cl).CreateTopic(ctx, partitions, -1, nil, topic)
	if err == nil {
		err = res.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	return nil
}
