package featurestore

// Behavior is what a user did to an item.
type Behavior uint8

// The behaviors, in funnel order. Their numeric values are stored on disk.
const (
	BehaviorView Behavior = iota
	BehaviorCart
	BehaviorFav
	BehaviorPurchase
	numBehaviors
)

var behaviorNames = [numBehaviors]string{"view", "cart", "fav", "purchase"}

// String returns the canonical name: view, cart, fav or purchase.
func (b Behavior) String() string {
	if b < numBehaviors {
		return behaviorNames[b]
	}
	return "unknown"
}

// ParseBehavior maps a name to a Behavior. The Taobao names pv and buy are
// aliases of view and purchase.
func ParseBehavior(s string) (Behavior, bool) {
	switch s {
	case "view", "pv":
		return BehaviorView, true
	case "cart":
		return BehaviorCart, true
	case "fav":
		return BehaviorFav, true
	case "purchase", "buy":
		return BehaviorPurchase, true
	}
	return 0, false
}

// Behaviors lists every behavior in funnel order.
func Behaviors() []Behavior {
	return []Behavior{BehaviorView, BehaviorCart, BehaviorFav, BehaviorPurchase}
}

// Event is a validated behavior event, as the store applies it.
type Event struct {
	ID         string
	UserID     string
	ItemID     string
	CategoryID string
	Behavior   Behavior
	TS         int64 // event time, Unix milliseconds
	// Derived says that ID is DerivedIDPrefix and the hex of 128 bits of a
	// hash of the other fields, time included (updater.Normalize sets it):
	// a resend has the same time, so its dedup state is kept only around
	// the watermark (see dedup.go). Other ids are kept for the dedup
	// horizon.
	Derived bool
}

// DerivedIDPrefix starts the ids derived from an event's content.
const DerivedIDPrefix = "h:"

// Entry is an event at its position in the log.
type Entry struct {
	Offset uint64
	Event  Event
}
