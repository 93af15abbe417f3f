package kafka

import "errors"

// ErrNoBrokers is returned by New and NewProducer without seed brokers.
var ErrNoBrokers = errors.New("kafka: no brokers")

// ErrNoTopic is returned by New and NewProducer without a topic.
var ErrNoTopic = errors.New("kafka: no topic")
