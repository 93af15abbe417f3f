package featurestore

import (
	_ "embed"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

//go:embed features.yaml
var defaultDefinitions []byte

// DefinitionError is a definition that cannot be served: File:Line names
// where, Reason why.
type DefinitionError struct {
	File   string
	Line   int
	Reason string
}

func (e *DefinitionError) Error() string {
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Reason)
}

// Definitions are the compiled views of a definitions file.
type Definitions struct {
	Views            []*View
	BehaviorWeights  [numBehaviors]float64
	AffinityHalfLife time.Duration
}

// View returns the view called name.
func (d *Definitions) View(name string) (*View, error) {
	for _, v := range d.Views {
		if v.Name == name {
			return v, nil
		}
	}
	names := make([]string, len(d.Views))
	for i, v := range d.Views {
		names[i] = v.Name
	}
	return nil, fmt.Errorf("%w %q (have %s)", ErrUnknownView, name, strings.Join(names, ", "))
}

// DefaultDefinitions returns the definitions shipped with recsys
// (featurestore/features.yaml).
func DefaultDefinitions() *Definitions {
	d, err := ParseDefinitions("features.yaml", defaultDefinitions)
	if err != nil {
		panic("BUG: default definitions: " + err.Error())
	}
	return d
}

// LoadDefinitions reads and compiles a definitions file.
func LoadDefinitions(path string) (*Definitions, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("feature definitions: %w", err)
	}
	return ParseDefinitions(path, b)
}

// Aggregations, as named in definitions files.
const (
	AggCount                 = "count"
	AggWeightedCount         = "weighted_count"
	AggRate                  = "rate"
	AggTrend                 = "trend"
	AggFirstEventTS          = "first_event_ts"
	AggLastEventTS           = "last_event_ts"
	AggSecondsSinceLastEvent = "seconds_since_last_event"
	AggRecentItems           = "recent_items"
	AggRecentCategories      = "recent_categories"
	AggTopCategories         = "top_categories"
	AggCategoryID            = "category_id"
	AggTopItems              = "top_items"
	AggDistinct              = "distinct"
)

// aggEntities says which entities each aggregation serves, and its kind.
var aggInfo = map[string]struct {
	entities []string
	kind     Kind
}{
	AggCount:                 {[]string{"user", "item"}, KindInt},
	AggWeightedCount:         {[]string{"user", "item"}, KindFloat},
	AggRate:                  {[]string{"user", "item"}, KindFloat},
	AggTrend:                 {[]string{"user", "item"}, KindFloat},
	AggFirstEventTS:          {[]string{"user", "item"}, KindTimestamp},
	AggLastEventTS:           {[]string{"user", "item"}, KindTimestamp},
	AggSecondsSinceLastEvent: {[]string{"user", "item"}, KindFloat},
	AggRecentItems:           {[]string{"user"}, KindStringList},
	AggRecentCategories:      {[]string{"user"}, KindStringList},
	AggTopCategories:         {[]string{"user"}, KindStringList},
	AggCategoryID:            {[]string{"item"}, KindString},
	AggTopItems:              {[]string{"category"}, KindStringList},
	AggDistinct:              {[]string{"user", "item"}, KindInt},
}

var entityPrefix = map[string]struct {
	prefix []byte
	kind   byte
	id     string
}{
	"user":     {prefixUser, kindUser, "user_id"},
	"item":     {prefixItem, kindItem, "item_id"},
	"category": {nil, 0, "category_id"},
}

type fileDoc struct {
	BehaviorWeights  map[string]float64 `yaml:"behavior_weights"`
	AffinityHalfLife string             `yaml:"affinity_half_life"`
	Views            []yaml.Node        `yaml:"views"`
}

type viewDoc struct {
	Name     string      `yaml:"name"`
	Entity   string      `yaml:"entity"`
	TTL      string      `yaml:"ttl"`
	Features []yaml.Node `yaml:"features"`
}

type featureDoc struct {
	Name          string   `yaml:"name"`
	Agg           string   `yaml:"agg"`
	Behavior      string   `yaml:"behavior"`
	Window        string   `yaml:"window"`
	Numerator     string   `yaml:"numerator"`
	Denominator   string   `yaml:"denominator"`
	PriorMean     *float64 `yaml:"prior_mean"`
	PriorStrength *float64 `yaml:"prior_strength"`
	Short         string   `yaml:"short"`
	Long          string   `yaml:"long"`
	K             int      `yaml:"k"`
	By            string   `yaml:"by"`
	Doc           string   `yaml:"doc"`
}

// knownKeys returns an error for the first key of mapping node n that is
// not a yaml tag of v's struct type.
func knownKeys(file string, n *yaml.Node, allowed ...string) error {
	if n.Kind != yaml.MappingNode {
		return &DefinitionError{file, n.Line, "want a mapping"}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if !slices.Contains(allowed, k.Value) {
			return &DefinitionError{file, k.Line, fmt.Sprintf("unknown key %q (want one of %s)", k.Value, strings.Join(allowed, ", "))}
		}
	}
	return nil
}

// ParseDefinitions compiles a definitions file; file names it in errors.
func ParseDefinitions(file string, data []byte) (*Definitions, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &DefinitionError{file, yamlLine(err), strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	if len(root.Content) == 0 {
		return nil, &DefinitionError{file, 1, "empty file: want views"}
	}
	top := root.Content[0]
	if err := knownKeys(file, top, "behavior_weights", "affinity_half_life", "views"); err != nil {
		return nil, err
	}
	var doc fileDoc
	if err := top.Decode(&doc); err != nil {
		return nil, &DefinitionError{file, yamlLine(err), strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	defs := &Definitions{BehaviorWeights: [numBehaviors]float64{1, 3, 2, 4}, AffinityHalfLife: 24 * time.Hour}
	for name, w := range doc.BehaviorWeights {
		b, ok := ParseBehavior(name)
		if !ok || w < 0 {
			return nil, &DefinitionError{file, top.Line, fmt.Sprintf("behavior_weights: bad entry %s: %v", name, w)}
		}
		defs.BehaviorWeights[b] = w
	}
	if doc.AffinityHalfLife != "" {
		d, err := ParseDuration(doc.AffinityHalfLife)
		if err != nil || d <= 0 {
			return nil, &DefinitionError{file, top.Line, fmt.Sprintf("affinity_half_life: %q is not a positive duration", doc.AffinityHalfLife)}
		}
		defs.AffinityHalfLife = d
	}
	if len(doc.Views) == 0 {
		return nil, &DefinitionError{file, top.Line, "views: at least one view is required"}
	}
	for i := range doc.Views {
		v, err := compileView(file, &doc.Views[i])
		if err != nil {
			return nil, err
		}
		if _, err := defs.View(v.Name); err == nil {
			return nil, &DefinitionError{file, doc.Views[i].Line, fmt.Sprintf("duplicate view name %q", v.Name)}
		}
		defs.Views = append(defs.Views, v)
	}
	return defs, nil
}

func compileView(file string, n *yaml.Node) (*View, error) {
	if err := knownKeys(file, n, "name", "entity", "ttl", "features"); err != nil {
		return nil, err
	}
	var vd viewDoc
	if err := n.Decode(&vd); err != nil {
		return nil, &DefinitionError{file, yamlLine(err), strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	bad := func(format string, args ...any) error {
		return &DefinitionError{file, n.Line, fmt.Sprintf("view %q: ", vd.Name) + fmt.Sprintf(format, args...)}
	}
	if vd.Name == "" {
		return nil, bad("name is required")
	}
	ent, ok := entityPrefix[vd.Entity]
	if !ok {
		if vd.Entity == "user_category" {
			return nil, bad("entity user_category has no aggregations in this version")
		}
		return nil, bad("unknown entity %q (want user, item or category)", vd.Entity)
	}
	v := &View{Name: vd.Name, Entity: vd.Entity, IDColumn: ent.id, prefix: ent.prefix, kind: ent.kind}
	if vd.TTL != "" {
		ttl, err := ParseDuration(vd.TTL)
		if err != nil || ttl <= 0 {
			return nil, bad("ttl %q is not a positive duration", vd.TTL)
		}
		v.TTL = ttl
	}
	if len(vd.Features) == 0 {
		return nil, bad("at least one feature is required")
	}
	for i := range vd.Features {
		f, err := compileFeature(file, v, &vd.Features[i])
		if err != nil {
			return nil, err
		}
		if slices.ContainsFunc(v.Features, func(g Feature) bool { return g.Name == f.Name }) || f.Name == v.IDColumn {
			return nil, &DefinitionError{file, vd.Features[i].Line, fmt.Sprintf("duplicate feature name %q in view %s", f.Name, v.Name)}
		}
		v.Features = append(v.Features, f)
	}
	return v, nil
}

const maxWindow = 12 * 24 * time.Hour

func compileFeature(file string, v *View, n *yaml.Node) (Feature, error) {
	if err := knownKeys(file, n, "name", "agg", "behavior", "window", "numerator", "denominator",
		"prior_mean", "prior_strength", "short", "long", "k", "by", "doc"); err != nil {
		return Feature{}, err
	}
	var fd featureDoc
	if err := n.Decode(&fd); err != nil {
		return Feature{}, &DefinitionError{file, yamlLine(err), strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	bad := func(format string, args ...any) (Feature, error) {
		return Feature{}, &DefinitionError{file, n.Line, fmt.Sprintf("feature %q: ", fd.Name) + fmt.Sprintf(format, args...)}
	}
	if fd.Name == "" {
		return bad("name is required")
	}
	info, ok := aggInfo[fd.Agg]
	if !ok {
		aggs := make([]string, 0, len(aggInfo))
		for a := range aggInfo {
			aggs = append(aggs, a)
		}
		slices.Sort(aggs)
		return bad("unknown aggregation %q (want one of %s)", fd.Agg, strings.Join(aggs, ", "))
	}
	if !slices.Contains(info.entities, v.Entity) {
		return bad("aggregation %s does not apply to entity %s", fd.Agg, v.Entity)
	}
	f := Feature{Name: fd.Name, Kind: info.kind, Agg: fd.Agg, Doc: fd.Doc, K: fd.K, Entity: v.Entity}
	window := func(field, s string, required bool) (int64, error) {
		if s == "" {
			if required {
				return 0, fmt.Errorf("%s is required", field)
			}
			return 0, nil
		}
		d, err := ParseDuration(s)
		switch {
		case err != nil:
			return 0, fmt.Errorf("%s %q: %v", field, s, err)
		case d <= 0 || d%(5*time.Minute) != 0:
			return 0, fmt.Errorf("%s %q is not a positive multiple of 5m", field, s)
		case d > maxWindow:
			return 0, fmt.Errorf("%s %q is longer than the 12d this version serves", field, s)
		case v.TTL > 0 && d > v.TTL:
			return 0, fmt.Errorf("%s %q is longer than the view's ttl %s", field, s, v.TTL)
		}
		return d.Milliseconds(), nil
	}
	behavior := func(field, s string) (Behavior, error) {
		b, ok := ParseBehavior(s)
		if !ok {
			return 0, fmt.Errorf("%s %q is not view, cart, fav or purchase", field, s)
		}
		return b, nil
	}
	var err error
	switch fd.Agg {
	case AggCount:
		if f.Behavior, err = behavior("behavior", fd.Behavior); err != nil {
			return bad("%v", err)
		}
		if f.Window, err = window("window", fd.Window, false); err != nil {
			return bad("%v", err)
		}
	case AggWeightedCount:
		if f.Window, err = window("window", fd.Window, true); err != nil {
			return bad("%v", err)
		}
	case AggRate:
		if f.Behavior, err = behavior("numerator", fd.Numerator); err != nil {
			return bad("%v", err)
		}
		if f.Denominator, err = behavior("denominator", fd.Denominator); err != nil {
			return bad("%v", err)
		}
		if f.Window, err = window("window", fd.Window, true); err != nil {
			return bad("%v", err)
		}
		if fd.PriorMean == nil || *fd.PriorMean < 0 || *fd.PriorMean > 1 {
			return bad("prior_mean in [0, 1] is required")
		}
		if fd.PriorStrength == nil || *fd.PriorStrength < 0 {
			return bad("prior_strength >= 0 is required")
		}
		f.PriorMean, f.PriorStrength = *fd.PriorMean, *fd.PriorStrength
	case AggTrend:
		if f.Window, err = window("short", fd.Short, true); err != nil {
			return bad("%v", err)
		}
		if f.Long, err = window("long", fd.Long, true); err != nil {
			return bad("%v", err)
		}
		if f.Long <= f.Window {
			return bad("long %s must be longer than short %s", fd.Long, fd.Short)
		}
	case AggDistinct:
		if f.Window, err = window("window", fd.Window, true); err != nil {
			return bad("%v", err)
		}
		if f.Window%coarseTile != 0 {
			return bad("window %q: distinct windows are whole hours", fd.Window)
		}
	case AggTopCategories:
		if fd.K <= 0 || fd.K > MaxAffinities {
			return bad("k must be in 1..%d", MaxAffinities)
		}
	case AggTopItems:
		if fd.K <= 0 || fd.K > 1000 {
			return bad("k must be in 1..1000")
		}
		if f.Window, err = window("window", fd.Window, true); err != nil {
			return bad("%v", err)
		}
		if f.Window%coarseTile != 0 {
			return bad("window %q: top_items windows are whole hours", fd.Window)
		}
		if fd.By == "weighted" {
			f.Weighted = true
		} else if f.Behavior, err = behavior("by", fd.By); err != nil {
			return bad("by %q is not weighted, view, cart, fav or purchase", fd.By)
		}
	}
	if f.Doc == "" {
		f.Doc = describe(&f)
	}
	return f, nil
}

func describe(f *Feature) string {
	win := "lifetime"
	if f.Window > 0 {
		win = "last " + FormatDuration(time.Duration(f.Window)*time.Millisecond)
	}
	switch f.Agg {
	case AggCount:
		return fmt.Sprintf("number of %s events, %s", f.Behavior, win)
	case AggWeightedCount:
		return "behavior-weighted number of events, " + win
	case AggRate:
		return fmt.Sprintf("%s/%s events with a prior of mean %g and strength %g, %s", f.Behavior, f.Denominator, f.PriorMean, f.PriorStrength, win)
	case AggTrend:
		return fmt.Sprintf("weighted events per hour over the last %s against the last %s", FormatDuration(time.Duration(f.Window)*time.Millisecond), FormatDuration(time.Duration(f.Long)*time.Millisecond))
	case AggTopItems:
		by := "weighted count"
		if !f.Weighted {
			by = f.Behavior.String() + " count"
		}
		return fmt.Sprintf("top %d items by %s, %s", f.K, by, win)
	case AggDistinct:
		other := "items"
		if f.Entity == "item" {
			other = "users"
		}
		return fmt.Sprintf("distinct %s (HyperLogLog, about 3%% error), %s, resolved to whole hours", other, win)
	case AggTopCategories:
		return fmt.Sprintf("top %d categories by time-decayed behavior-weighted affinity", f.K)
	}
	return strings.ReplaceAll(f.Agg, "_", " ")
}

// ParseDuration accepts Go durations and a day unit: "5m", "1h", "7d".
func ParseDuration(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil {
			return 0, fmt.Errorf("bad duration %q", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q", s)
	}
	return d, nil
}

// FormatDuration writes whole days as "7d" and other durations compactly.
func FormatDuration(d time.Duration) string {
	switch {
	case d > 24*time.Hour && d%(24*time.Hour) == 0:
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	case d > 0 && d%time.Hour == 0:
		return strconv.Itoa(int(d/time.Hour)) + "h"
	case d > 0 && d%time.Minute == 0:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	}
	return d.String()
}

// yamlLine extracts "line N" from a yaml error, or 1.
func yamlLine(err error) int {
	s := err.Error()
	if i := strings.Index(s, "line "); i >= 0 {
		j := i + 5
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if n, err := strconv.Atoi(s[i+5 : j]); err == nil {
			return n
		}
	}
	return 1
}
