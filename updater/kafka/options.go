package kafka

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Content types of record values, named by the "content-type" header.
const (
	ContentJSON     = "application/json"
	ContentProtobuf = "application/x-protobuf"
	// ContentDeadLetter is a record that holds a recsysv1.DeadLetter: an
	// event that ingest refused (Producer.PublishDeadLetters). The
	// consumer keeps it as a dead letter; it is never a default content
	// type.
	ContentDeadLetter = "application/x-recsys-dead-letter"
	// HeaderContentType is the record header naming the value's encoding.
	HeaderContentType = "content-type"
)

// Options configures a Consumer. Zero fields take the documented defaults.
type Options struct {
	Brokers []string // seed brokers; required
	Topic   string   // required
	// Group is the consumer group. Default "recsys".
	Group string
	// InstanceID, when set, makes the consumer a static group member: a
	// restarted process with the same id takes its partitions back at once
	// instead of waiting for the dead member's session to time out.
	InstanceID string
	// DLQTopic receives bad records. Default Topic + ".dlq".
	DLQTopic string
	// ContentType is how values without a content-type header are read:
	// ContentJSON (default) or ContentProtobuf.
	ContentType string
	// MaxBatch is the most records applied in one store batch. Default 16384.
	MaxBatch int
	// FetchMaxBytes bounds one fetch response, and so the memory buffered
	// ahead of the updater. Default 16 MiB.
	FetchMaxBytes int32
	// AllowedLateness: a record older than its partition's newest event
	// time minus this is a dead letter ("late"). Default 1h.
	AllowedLateness time.Duration
	// MaxFutureSkew: a record more than this past the wall clock is a dead
	// letter ("future"). Default 5m.
	MaxFutureSkew time.Duration
	// StopAt, when set, makes Run return nil once every partition listed
	// has been applied up to (not including) its offset: rebuilds and
	// benchmarks read a fixed range of the topic.
	StopAt map[int32]int64
	// Now is the wall clock. Default time.Now.
	Now func() time.Time
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Registerer receives the consumer's metrics; nil registers nowhere.
	Registerer prometheus.Registerer
}

func (o *Options) ensureDefaults() error {
	if len(o.Brokers) == 0 {
		return ErrNoBrokers
	}
	if o.Topic == "" {
		return ErrNoTopic
	}
	if o.Group == "" {
		o.Group = "recsys"
	}
	if o.DLQTopic == "" {
		o.DLQTopic = o.Topic + ".dlq"
	}
	if o.ContentType == "" {
		o.ContentType = ContentJSON
	}
	ct, ok := normalizeContentType(o.ContentType)
	if !ok {
		return fmt.Errorf("kafka: content type %q is neither %s nor %s", o.ContentType, ContentJSON, ContentProtobuf)
	}
	o.ContentType = ct
	if o.MaxBatch <= 0 {
		o.MaxBatch = 16384
	}
	if o.FetchMaxBytes <= 0 {
		o.FetchMaxBytes = 16 << 20
	}
	if o.AllowedLateness <= 0 {
		o.AllowedLateness = time.Hour
	}
	if o.MaxFutureSkew <= 0 {
		o.MaxFutureSkew = 5 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// normalizeContentType maps the accepted spellings to ContentJSON or
// ContentProtobuf.
func normalizeContentType(s string) (string, bool) {
	switch s {
	case ContentJSON, "json":
		return ContentJSON, true
	case ContentProtobuf, "application/protobuf", "application/vnd.google.protobuf", "protobuf", "proto":
		return ContentProtobuf, true
	}
	return "", false
}
