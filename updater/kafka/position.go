package kafka

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// A partition's position is kept in the store under the meta key
// "kafka/<topic>/<partition>" (so "m/kafka/<topic>/<partition>" in Pebble):
// 8 bytes big-endian next offset, 8 bytes big-endian newest event time
// (Unix ms) of the partition, the base of its watermark. Every partition
// has its own key, so partitions can later be split across processes that
// each own a subset of the keys.
type position struct {
	next  int64 // offset of the next record to apply
	maxTS int64 // newest event time applied from the partition (0: none)
	// seeked is set once the consumer asked the client to go back to next
	// after a fetch started past it; a second gap is taken as real (records
	// deleted by retention) and skipped with a warning.
	seeked bool
}

func positionKey(topic string, partition int32) string {
	return "kafka/" + topic + "/" + strconv.Itoa(int(partition))
}

// positionPrefix is the meta prefix of every partition of topic.
func positionPrefix(topic string) string { return "kafka/" + topic + "/" }

func (p position) encode() []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 16), uint64(p.next))
	return binary.BigEndian.AppendUint64(b, uint64(p.maxTS))
}

func decodePosition(key string, v []byte) (position, error) {
	if len(v) != 16 {
		return position{}, fmt.Errorf("kafka: position %s: %d bytes, want 16", key, len(v))
	}
	return position{next: int64(binary.BigEndian.Uint64(v)), maxTS: int64(binary.BigEndian.Uint64(v[8:]))}, nil
}

// parsePositionKey returns the partition of a key under positionPrefix.
func parsePositionKey(prefix, key string) (int32, bool) {
	n, err := strconv.ParseInt(strings.TrimPrefix(key, prefix), 10, 32)
	return int32(n), err == nil && strings.HasPrefix(key, prefix)
}
