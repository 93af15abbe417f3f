// Package models holds the incremental models of the recommender:
// item-item co-occurrence (Swing-style neighbours), matrix factorization,
// the online ranker (FTRL-Proximal with progressive validation) and the
// users' model histories and items' recent users.
//
// # Model
//
// Models is the store's featurestore.Learner: handed to featurestore.Open
// as Options.Learner, it learns inside Apply, event by event and with the
// state as it was before each event, and writes its records (keys n/,
// v/u/, v/i/ and m/models) into the apply batch. So the models are
// exactly once with the features and the offset, and deterministic: the
// same sequence of events gives the same records whatever the batch
// boundaries, restarts or crashes (negatives come from generators seeded
// by the event id, initial factors from a hash of the id). Neighbour
// records are written as merge deltas that the store's merge operator
// folds through Merge (pairs.go). The meta (m/models) keeps the negative
// ring and the ranker's window in chunk keys under it, and a batch
// rewrites only the chunks it changed. The neighbour records' log values
// depend on models.decay-half-life, which the meta records: Load converts
// them once, in one batch (featurestore.Store.Migrate), when a data dir is
// opened with another.
//
// The read side (User, Item, Neighbors, MFTop, Context and Ranker, Info,
// the Scan* model tables) serves featurestore/recommend and the Flight
// model tables from committed state and the in-memory factor table. MF
// candidates come from an approximate index of the table (mfindex.go),
// built in the background and used by nothing that learns.
//
// # Caveats
//
// One Models serves one store. Apply owns the caches; reads run
// concurrently with it. Neighbour lists of surviving items may name an
// expired item until their pairs are pruned; readers drop items without a
// feature record. Freeze stops learning (histories still move), for
// evaluation. Close stops a running index build (the store's Close calls
// it).
package models
