package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/streamrec/recsys/serving"
	"github.com/streamrec/recsys/updater"
	"github.com/streamrec/recsys/updater/datadir"
	"github.com/streamrec/recsys/updater/kafka"
)

// kafkaConfig is the Kafka source of `recsys serve` and `recsys rebuild`.
// Without brokers the embedded event log is used.
type kafkaConfig struct {
	Brokers     []string
	Topic       string
	Group       string
	InstanceID  string
	DLQTopic    string
	ContentType string
	MaxBatch    int
}

func (c *kafkaConfig) bindFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&c.Brokers, "kafka.brokers", nil, "Kafka seed brokers (host:port, comma-separated): consume events from --kafka.topic instead of the embedded log, and publish POST /v1/events there")
	fs.StringVar(&c.Topic, "kafka.topic", "events", "topic of behavior events (records keyed by user id)")
	c.bindConsumerFlags(fs)
}

// bindClientFlags binds only the brokers and the topic, for the tools that
// produce to or read a topic without consuming it as the updater does
// (topic: "" leaves --kafka.topic out).
func (c *kafkaConfig) bindClientFlags(fs *pflag.FlagSet, topic string) {
	fs.StringSliceVar(&c.Brokers, "kafka.brokers", nil, "Kafka seed brokers (host:port, comma-separated)")
	if topic != "" {
		fs.StringVar(&c.Topic, "kafka.topic", "events", topic)
	}
}

// bindMaxBatch binds --kafka.max-batch, for the updater and kafka bench.
func (c *kafkaConfig) bindMaxBatch(fs *pflag.FlagSet) {
	fs.IntVar(&c.MaxBatch, "kafka.max-batch", 8192, "most records applied in one store batch")
}

func (c *kafkaConfig) bindConsumerFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Group, "kafka.group", "recsys", "consumer group")
	fs.StringVar(&c.InstanceID, "kafka.instance-id", "", "static group membership id: a restarted process with the same id gets its partitions back without waiting for the session timeout")
	fs.StringVar(&c.DLQTopic, "kafka.dlq-topic", "", "dead-letter topic (default <kafka.topic>.dlq)")
	fs.StringVar(&c.ContentType, "kafka.content-type", "json", "encoding of record values without a content-type header: json or protobuf")
	c.bindMaxBatch(fs)
}

func (c *kafkaConfig) validate() error {
	switch {
	case len(c.Brokers) == 0:
		return nil
	case c.Topic == "":
		return fmt.Errorf("kafka.topic: required with kafka.brokers")
	case c.Group == "":
		return fmt.Errorf("kafka.group: required with kafka.brokers")
	case c.ContentType != "json" && c.ContentType != "protobuf":
		return fmt.Errorf("kafka.content-type: %q is neither json nor protobuf", c.ContentType)
	case c.MaxBatch <= 0:
		return fmt.Errorf("kafka.max-batch: %d is not positive", c.MaxBatch)
	}
	for _, b := range c.Brokers {
		if !strings.Contains(b, ":") {
			return fmt.Errorf("kafka.brokers: %q is not host:port", b)
		}
	}
	return nil
}

func (c *kafkaConfig) contentType() string {
	if c.ContentType == "protobuf" {
		return kafka.ContentProtobuf
	}
	return kafka.ContentJSON
}

// consumerOptions are the consumer's options for serve and rebuild.
func (c *kafkaConfig) consumerOptions(ing ingestConfig, logger *slog.Logger, reg prometheus.Registerer) kafka.Options {
	return kafka.Options{
		Brokers: c.Brokers, Topic: c.Topic, Group: c.Group, InstanceID: c.InstanceID, DLQTopic: c.DLQTopic, ContentType: c.contentType(),
		MaxBatch: c.MaxBatch, AllowedLateness: ing.lateness, MaxFutureSkew: ing.futureSkew,
		Logger: logger.With("component", "kafka"), Registerer: reg,
	}
}

// kafkaSource is serve's Kafka mode: the producer behind POST /v1/events
// and the consumer that replaces the embedded log's updater.
type kafkaSource struct {
	cfg      *kafkaConfig
	ing      ingestConfig
	prod     *kafka.Producer
	consumer atomic.Pointer[kafka.Consumer] // set once Run has created it
}

// newKafkaSource returns nil without brokers.
func newKafkaSource(cfg *kafkaConfig, ing ingestConfig) (*kafkaSource, error) {
	if len(cfg.Brokers) == 0 {
		return nil, nil
	}
	prod, err := kafka.NewProducer(cfg.Brokers, cfg.Topic)
	if err != nil {
		return nil, err
	}
	return &kafkaSource{cfg: cfg, ing: ing, prod: prod}, nil
}

// publisher is what ingest publishes to the topic with instead of
// appending to the embedded log; nil without Kafka.
func (k *kafkaSource) publisher() updater.Publisher {
	if k == nil {
		return nil
	}
	return k.prod
}

// Run consumes the topic into eng's store until ctx is done.
func (k *kafkaSource) Run(ctx context.Context, eng *datadir.Dir, _ *config, logger *slog.Logger, reg prometheus.Registerer) error {
	c, err := kafka.New(eng.Store, k.cfg.consumerOptions(k.ing, logger, reg))
	if err != nil {
		return err
	}
	k.consumer.Store(c)
	logger.Info("consuming from Kafka", "brokers", k.cfg.Brokers, "topic", k.cfg.Topic, "group", k.cfg.Group)
	return c.Run(ctx)
}

// progress is the consumer's position in the topic for stats (zeros
// before it starts).
func (k *kafkaSource) progress() serving.SourceProgress {
	c := k.consumer.Load()
	if c == nil {
		return serving.SourceProgress{}
	}
	p := c.Progress()
	return serving.SourceProgress{Applied: uint64(max(p.Applied, 0)), End: uint64(max(p.End, 0)), Watermark: p.Watermark}
}

// Close closes the producer; safe on nil.
func (k *kafkaSource) Close() {
	if k != nil {
		k.prod.Close()
	}
}
