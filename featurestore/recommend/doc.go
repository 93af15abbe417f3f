// Package recommend answers recommendation requests from a store's
// committed state and its models: Recommend (the full method and the
// single sources that evaluation compares it with), SimilarItems,
// SimilarUsers and the user history that reasons are built from.
//
// # Model
//
// The full method gathers candidates from the user's history neighbours,
// similar users, the MF top of the whole catalogue, popular items of the
// user's strongest categories, the last hour's trends and global
// popularity; drops purchased, excluded, seen (exclude_seen) and
// off-category items; ranks the rest with the published ranker (by source
// rank before its first publication); keeps the reason of the strongest
// source; and fills with popular items so the list is never short while
// items exist.
//
// A Recommender only reads: it is safe for concurrent use, and every
// request sees some committed batch of each store read (the store, the
// models' records and factor table are read separately, so a request
// during Apply may mix two consecutive batches). The hour's trending items
// are cached for one second of the read clock.
package recommend
