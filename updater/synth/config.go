package synth

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Defaults applied by Config.EnsureDefaults.
const (
	defaultSeed         uint64        = 1
	defaultUsers                      = 10_000
	defaultItems                      = 50_000
	defaultCategories                 = 500
	defaultEvents                     = 1_000_000
	defaultSpan         time.Duration = 24 * time.Hour
	defaultZipfS                      = 1.1
	defaultCartRate                   = 0.06
	defaultFavRate                    = 0.035
	defaultPurchaseRate               = 0.35

	// maxEntities bounds Users, Items and Categories. The generator keeps
	// roughly 40 bytes of lookup tables per item and 12 per user.
	maxEntities = 1 << 26
)

// defaultStart is 2026-01-01T00:00:00Z.
var defaultStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Config parameterises a Generator. The zero value of every field means
// "use the default" (see EnsureDefaults); in particular a rate of 0 is
// replaced by its default, so to (almost) disable a funnel step use a tiny
// positive rate such as 1e-12.
type Config struct {
	Seed       uint64        // default 1
	Users      int           // default 10_000
	Items      int           // default 50_000
	Categories int           // default 500
	Events     int           // total events to produce, default 1_000_000
	Start      time.Time     // first event time; default 2026-01-01T00:00:00Z
	Span       time.Duration // event times spread over [Start, Start+Span); default 24h
	ZipfS      float64       // Zipf exponent for item popularity (>1), default 1.1

	// Funnel probabilities inside a session: after a view, cart with
	// CartRate (default 0.06) and fav with FavRate (default 0.035); after a
	// cart, purchase with PurchaseRate (default 0.35).
	CartRate, FavRate, PurchaseRate float64
}

// EnsureDefaults replaces zero-valued fields with their documented defaults.
func (c *Config) EnsureDefaults() {
	if c.Seed == 0 {
		c.Seed = defaultSeed
	}
	if c.Users == 0 {
		c.Users = defaultUsers
	}
	if c.Items == 0 {
		c.Items = defaultItems
	}
	if c.Categories == 0 {
		c.Categories = defaultCategories
	}
	if c.Events == 0 {
		c.Events = defaultEvents
	}
	if c.Start.IsZero() {
		c.Start = defaultStart
	}
	if c.Span == 0 {
		c.Span = defaultSpan
	}
	if c.ZipfS == 0 {
		c.ZipfS = defaultZipfS
	}
	if c.CartRate == 0 {
		c.CartRate = defaultCartRate
	}
	if c.FavRate == 0 {
		c.FavRate = defaultFavRate
	}
	if c.PurchaseRate == 0 {
		c.PurchaseRate = defaultPurchaseRate
	}
}

// Validate reports every invalid field; each error names the field
// (e.g. "synth: Config.Users must be in [1, 67108864], got 0"). It does not
// apply defaults, so call EnsureDefaults first if zero values are intended.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("synth: Config.%s "+format, append([]any{field}, args...)...))
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"Users", c.Users}, {"Items", c.Items}, {"Categories", c.Categories}} {
		if f.v < 1 || f.v > maxEntities {
			bad(f.name, "must be in [1, %d], got %d", maxEntities, f.v)
		}
	}
	if c.Events < 1 {
		bad("Events", "must be > 0, got %d", c.Events)
	}
	if c.Span < time.Millisecond {
		bad("Span", "must be >= 1ms, got %v", c.Span)
	}
	if !(c.ZipfS > 1) || math.IsInf(c.ZipfS, 1) {
		bad("ZipfS", "must be a finite number > 1, got %v", c.ZipfS)
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"CartRate", c.CartRate}, {"FavRate", c.FavRate}, {"PurchaseRate", c.PurchaseRate}} {
		if !(f.v >= 0 && f.v <= 1) {
			bad(f.name, "must be in [0, 1], got %v", f.v)
		}
	}
	return errors.Join(errs...)
}
