package kafka

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	records    *prometheus.CounterVec // by result
	dead       *prometheus.CounterVec // by reason
	skipped    *prometheus.CounterVec // by reason
	lag        *prometheus.GaugeVec   // by partition
	next       *prometheus.GaugeVec   // by partition
	freshness  prometheus.Histogram
	apply      prometheus.Histogram
	fetchError prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "recsys_kafka_records_total",
			Help: "Kafka records consumed, by result: applied, duplicate (an event id seen before) or dead_letter.",
		}, []string{"result"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "recsys_kafka_dead_letters_total",
			Help: "Kafka records sent to the dead-letter topic, by reason (undecodable, late, future, or a validation code).",
		}, []string{"reason"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "recsys_kafka_skipped_records_total",
			Help: "Kafka records not applied because of their offset: already_applied (below the stored offset) or gap (the offsets between were deleted by retention).",
		}, []string{"reason"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "recsys_kafka_consumer_lag_records",
			Help: "Records of a partition not yet applied: its high watermark at the last fetch minus the next offset to apply.",
		}, []string{"topic", "partition"}),
		next: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "recsys_kafka_applied_offset",
			Help: "Next offset to apply of each assigned partition, as committed to the store.",
		}, []string{"topic", "partition"}),
		freshness: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "recsys_kafka_freshness_seconds",
			Help:    "Time from a record's Kafka timestamp to its effect being readable through the API.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
		}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "recsys_kafka_apply_duration_seconds",
			Help:    "Time to apply one polled batch of Kafka records (decode, validate, dead letters, store batch).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		fetchError: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "recsys_kafka_fetch_errors_total",
			Help: "Errors returned by fetches (the client retries them).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.records, m.dead, m.skipped, m.lag, m.next, m.freshness, m.apply, m.fetchError)
	}
	return m
}
