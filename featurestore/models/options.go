package models

import (
	"errors"
	"fmt"
	"time"
)

// Options are the hyperparameters of the incremental models. Zero fields
// take the defaults documented on each field.
type Options struct {
	// HistoryCap is how many distinct recent interactions a user's model
	// history keeps: the history that item pairs and reasons come from
	// (Swing's cap on very active users). Default 50.
	HistoryCap int
	// PairCap is how many of the newest history items a new event is
	// paired with. Default 5 (10 gave the same NDCG@10 on the Taobao
	// sample and applied about 9% fewer events per second).
	PairCap int
	// PairWindow: history items older than this before a new event are
	// not paired with it. Default 72h.
	PairWindow time.Duration
	// PairHalfLife decays a pair's weight with the time between its two
	// events. Default 24h.
	PairHalfLife time.Duration
	// DecayHalfLife is the forward decay of co-occurrence weights and item
	// masses: older evidence counts less. Default 30 days (720h): at 7
	// days, a catalogue rated a few hundred times a day (MovieLens 100K) kept
	// too little evidence, and discovery NDCG@10 fell from 0.0953 to 0.0880,
	// below item-kNN (0.0907); on the Taobao users sample 7, 30 and 90 days
	// scored within 0.0005 of each other in both variants.
	DecayHalfLife time.Duration
	// UserAlpha damps very active users as Swing does: a user's pairs
	// weigh 1/sqrt(UserAlpha + events of the user). Default 5.
	UserAlpha float64
	// Shrinkage is added to the denominator of the cosine similarity so
	// that pairs seen once between rare items do not score 1. Default 1.
	Shrinkage float64
	// Neighbors is how many neighbours each item exposes; up to half as
	// many again are kept so that new pairs can grow. Default 100.
	Neighbors int
	// RecentUsers is how many recent users each item keeps for user-user
	// similarity. Default 50.
	RecentUsers int
	// Dim is the number of latent factors of matrix factorization.
	// Default 32.
	Dim int
	// LearningRate and Reg are the SGD step and L2 penalty of matrix
	// factorization. Defaults 0.05 and 0.01.
	LearningRate, Reg float64
	// Negatives is how many sampled negatives each event trains with:
	// matrix factorization draws them from recently interacted items (so
	// roughly by popularity), the ranker uniformly from the catalogue.
	// Default 4.
	Negatives int
	// FTRL-Proximal hyperparameters of the ranker. Defaults: alpha 1,
	// beta 1, L1 0.01, L2 0.1 (on the Taobao sample, alpha 0.05 left the
	// ranker underfit: NDCG@10 fell below item-to-item alone).
	RankerAlpha, RankerBeta, RankerL1, RankerL2 float64
	// RankerWindow is how many recent examples the rolling AUC and log
	// loss cover. Default 10000.
	RankerWindow int
	// PublishEvery is how many examples pass between publication checks.
	// Default 5000.
	PublishEvery int
	// PublishMargin: a new weight version is published only if its rolling
	// AUC is at least the published version's minus this. Default 0.005.
	PublishMargin float64
	// RankerSample is the share of view events the ranker trains on,
	// chosen by a hash of the event id (so the same events whatever the
	// batches); every cart, fav and purchase trains it, since those are
	// what recommendations are judged by. Its examples are most of the
	// cost of applying an event with models (the user's context, 20
	// neighbour lists, five feature vectors). Default 0.25: on the Taobao
	// users sample it applied 31% more events per second than 1, with
	// NDCG@10 of full 0.0043 (discovery) and 0.0979 (re-engagement)
	// against 0.0042 and 0.0955; training on every non-view event as well
	// raised re-engagement to 0.0994 (discovery unchanged).
	RankerSample float64
	// RankerPairs is how many of the user's other history items (not
	// bought, drawn by a hash of the event id) a re-engagement — a cart,
	// fav or purchase of an item the user touched before — is contrasted
	// with in pairwise steps of the ranker's history weights; negative:
	// none. Default 10: on the Taobao users sample re-engagement NDCG@10
	// went from 0.0994 to 0.1150 (3 pairs among the newest 20 items
	// 0.1020, 6 0.1048, 12 0.1072; over the whole history 20 pairs 0.1144,
	// 50 0.1133), discovery unchanged (0.0043); 10 pairs cost about 4 % of
	// the CPU of applying an event.
	RankerPairs int
	// CacheEntries bounds the writer's caches of decoded model records
	// (the user, item and neighbour caches hold this many each). Default
	// 131072, as the store's record caches: a record that drops out is
	// read back from Pebble and folded from its merge operands, which on
	// BenchmarkApply (50 k items drawn uniformly) cost 169 µs of CPU per
	// event at 32768 against 114 µs. Full caches hold about 2.5 KB per
	// user (a 50-item history) and 1.4 KB per item (factors, recent users,
	// neighbours): about 500 MB at the default.
	CacheEntries int
	// CacheBytes bounds the memory of the writer's and the readers' caches
	// of model records too, by the records' sizes (featurestore's
	// MemoryBudget.ModelRecords under --state.memory-limit): 35 % for the
	// writer's neighbour records, 25 % the readers', 15 % the writer's
	// users, 10 % its items, 8 % the readers' users and 7 % their items.
	// 0: by entries alone.
	CacheBytes int64
	// MFIndexMin is the number of items from which MF candidates (MFTop)
	// come from an approximate index built in the background (mfindex.go)
	// rather than a scan of every item's factors; negative: never (an
	// exact scan, deterministic; evaluation uses it). Default 5000.
	MFIndexMin int
	// MFIndexList is the number of items per list of the MF index the
	// build aims at. Default 64.
	MFIndexList int
	// MFIndexScan is how many lists of the MF index a query for up to 64
	// candidates scans (more lists for more). Default 64: on the
	// clustered vectors of BenchmarkMFTop a recall@50 against the exact
	// scan of 0.975 at 100 k items (0.57 against 2.3 ms) and 0.982 at 1 M
	// (0.82 against 23 ms).
	MFIndexScan int
}

// EnsureDefaults fills in zero fields with their defaults.
func (o *Options) EnsureDefaults() {
	setInt := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	setF := func(p *float64, v float64) {
		if *p <= 0 {
			*p = v
		}
	}
	setD := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	setInt(&o.HistoryCap, 50)
	setInt(&o.PairCap, 5)
	setD(&o.PairWindow, 72*time.Hour)
	setD(&o.PairHalfLife, 24*time.Hour)
	setD(&o.DecayHalfLife, 30*24*time.Hour)
	setF(&o.UserAlpha, 5)
	setF(&o.Shrinkage, 1)
	setInt(&o.Neighbors, 100)
	setInt(&o.RecentUsers, 50)
	setInt(&o.Dim, 32)
	setF(&o.LearningRate, 0.05)
	setF(&o.Reg, 0.01)
	setInt(&o.Negatives, 4)
	setF(&o.RankerAlpha, 1)
	setF(&o.RankerBeta, 1)
	setF(&o.RankerL1, 0.01)
	setF(&o.RankerL2, 0.1)
	setInt(&o.RankerWindow, 10000)
	setInt(&o.PublishEvery, 5000)
	setF(&o.PublishMargin, 0.005)
	setF(&o.RankerSample, 0.25)
	if o.RankerPairs == 0 {
		o.RankerPairs = 10
	}
	setInt(&o.CacheEntries, 128<<10)
	if o.MFIndexMin == 0 {
		o.MFIndexMin = 5000
	}
	setInt(&o.MFIndexList, 64)
	setInt(&o.MFIndexScan, 64)
}

// Validate reports hyperparameters out of range, naming the field.
func (o *Options) Validate() error {
	switch {
	case o.HistoryCap > 1000:
		return errors.New("models.history-cap: at most 1000")
	case o.PairCap > o.HistoryCap:
		return fmt.Errorf("models.pair-cap: %d is more than models.history-cap %d", o.PairCap, o.HistoryCap)
	case o.Neighbors > 1000:
		return errors.New("models.neighbors: at most 1000")
	case o.Dim > 256:
		return errors.New("models.dim: at most 256")
	case o.Negatives > 50:
		return errors.New("models.negatives: at most 50")
	case o.LearningRate > 1:
		return errors.New("models.learning-rate: at most 1")
	case o.PublishMargin > 1:
		return errors.New("models.publish-margin: at most 1")
	case o.MFIndexList > 1<<16:
		return errors.New("models.mf-index-list: at most 65536")
	case o.MFIndexScan > 1<<16:
		return errors.New("models.mf-index-scan: at most 65536")
	case o.RankerSample > 1:
		return errors.New("models.ranker-sample: at most 1 (the share of events the ranker trains on)")
	}
	return nil
}
