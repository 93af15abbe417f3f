package featurestore

import (
	"errors"

	"github.com/streamrec/recsys/featurestore/internal/codec"
)

var (
	// ErrClosed is returned by operations on a closed Store.
	ErrClosed = errors.New("featurestore: closed")
	// ErrUnknownView is returned for a view name that does not exist.
	ErrUnknownView = errors.New("featurestore: unknown view")
	// ErrUnknownFeature is returned for a feature name a view does not have.
	ErrUnknownFeature = errors.New("featurestore: unknown feature")
	// ErrCorrupt is returned when a stored record cannot be decoded.
	ErrCorrupt = codec.ErrCorrupt
	// ErrStorage is returned once Pebble failed to write (a failed WAL
	// write or sync, a full disk): the instance refuses writes until the
	// process restarts and recovers from what was synced.
	ErrStorage = errors.New("featurestore: storage failed")
)
