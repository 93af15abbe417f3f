package eval

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// VariantReport holds a variant's metrics per method.
type VariantReport struct {
	Targets int                           `json:"targets"`
	Methods map[string]map[string]float64 `json:"methods"`
	// Intervals holds, per method and metric, the 95% bootstrap interval.
	Intervals map[string]map[string][2]float64 `json:"intervals"`
	// VsFull holds, per method, the paired difference full − method in
	// NDCG@K (the smallest K): mean and 95% bootstrap interval over the
	// same resamples of targets. An interval above 0 means full is better.
	VsFull map[string]PairedDelta `json:"vs_full"`
	// ByDay is NDCG@K (the smallest K) per day of event time.
	ByDay []DayReport `json:"by_day"`
	order []string
}

// PairedDelta is a paired difference of a metric between two methods.
type PairedDelta struct {
	Metric string     `json:"metric"`
	Mean   float64    `json:"mean"`
	CI     [2]float64 `json:"ci"`
}

// DayReport is NDCG@K per method on one day's targets.
type DayReport struct {
	Day     string             `json:"day"`
	Targets int                `json:"targets"`
	NDCG    map[string]float64 `json:"ndcg"`
}

// MetricValue is the value of metric name ("hr", "ndcg", "mrr") at list
// length k for a target at 1-based rank (0: not in the list). HR and NDCG
// count ranks up to k; MRR counts every rank returned.
func MetricValue(name string, k, rank int) float64 {
	switch name {
	case "hr":
		if rank > 0 && rank <= k {
			return 1
		}
	case "ndcg":
		if rank > 0 && rank <= k {
			return 1 / math.Log2(float64(rank)+1)
		}
	case "mrr":
		if rank > 0 {
			return 1 / float64(rank)
		}
	}
	return 0
}

// bootstrap holds resamples of target indexes, shared by every method and
// metric of a variant, so that intervals and paired differences of
// different methods come from the same resamples.
type bootstrap [][]int

func newBootstrap(n, resamples int, rng *rand.Rand) bootstrap {
	idx := make(bootstrap, resamples)
	for r := range idx {
		idx[r] = make([]int, n)
		for j := range idx[r] {
			idx[r][j] = rng.IntN(max(n, 1))
		}
	}
	return idx
}

// interval is the 95% percentile interval of the mean of vals over the
// resamples ([0, 0] without resamples or values).
func (b bootstrap) interval(vals []float64) [2]float64 {
	if len(b) == 0 || len(vals) == 0 {
		return [2]float64{0, 0}
	}
	means := make([]float64, len(b))
	for r, idx := range b {
		var s float64
		for _, j := range idx {
			s += vals[j]
		}
		means[r] = s / float64(len(vals))
	}
	slices.Sort(means)
	n := len(means)
	return [2]float64{means[int(0.025*float64(n))], means[min(n-1, int(0.975*float64(n)))]}
}

func mean(vals []float64) float64 {
	if len(vals) == 0 {
		return 0
	}
	var s float64
	for _, v := range vals {
		s += v
	}
	return s / float64(len(vals))
}

type metricSpec struct {
	key  string
	name string
	k    int
}

func metricSpecs(ks []int) []metricSpec {
	var specs []metricSpec
	for _, k := range ks {
		specs = append(specs, metricSpec{fmt.Sprintf("hr@%d", k), "hr", k}, metricSpec{fmt.Sprintf("ndcg@%d", k), "ndcg", k})
	}
	return append(specs, metricSpec{"mrr", "mrr", ks[len(ks)-1]})
}

// summarize computes every metric of every method (ranks[i] of a result
// belongs to methods[i]) with bootstrap intervals, the paired differences
// to full and the per-day NDCG.
func summarize(results []targetResult, methods []string, ks []int, resamples int, rng *rand.Rand) *VariantReport {
	rep := &VariantReport{Targets: len(results), Methods: make(map[string]map[string]float64),
		Intervals: make(map[string]map[string][2]float64), VsFull: make(map[string]PairedDelta), order: methods}
	n := len(results)
	bs := newBootstrap(n, resamples, rng)
	column := func(mi int, name string, k int) []float64 {
		vals := make([]float64, n)
		for j, r := range results {
			vals[j] = MetricValue(name, k, r.ranks[mi])
		}
		return vals
	}
	for mi, m := range methods {
		rep.Methods[m] = make(map[string]float64)
		rep.Intervals[m] = make(map[string][2]float64)
		for _, sp := range metricSpecs(ks) {
			vals := column(mi, sp.name, sp.k)
			rep.Methods[m][sp.key] = mean(vals)
			rep.Intervals[m][sp.key] = bs.interval(vals)
		}
	}
	if full := slices.Index(methods, MethodFull); full >= 0 && n > 0 && resamples > 0 {
		key := fmt.Sprintf("ndcg@%d", ks[0])
		fv := column(full, "ndcg", ks[0])
		for mi, m := range methods {
			if mi == full {
				continue
			}
			mv := column(mi, "ndcg", ks[0])
			diff := make([]float64, n)
			for j := range diff {
				diff[j] = fv[j] - mv[j]
			}
			rep.VsFull[m] = PairedDelta{Metric: key, Mean: mean(diff), CI: bs.interval(diff)}
		}
	}
	byDay := make(map[string][]targetResult)
	for _, r := range results {
		byDay[r.day] = append(byDay[r.day], r)
	}
	days := make([]string, 0, len(byDay))
	for d := range byDay {
		days = append(days, d)
	}
	slices.Sort(days)
	for _, d := range days {
		dr := DayReport{Day: d, Targets: len(byDay[d]), NDCG: make(map[string]float64)}
		for mi, m := range methods {
			var s float64
			for _, r := range byDay[d] {
				s += MetricValue("ndcg", ks[0], r.ranks[mi])
			}
			dr.NDCG[m] = s / float64(len(byDay[d]))
		}
		rep.ByDay = append(rep.ByDay, dr)
	}
	return rep
}

// FreshnessReport is the freshness curve: full served from a store that
// lags the replay by each delay (Options.Delays), on the same targets,
// with NDCG@K and HR@K at the smallest K, their 95% intervals and the
// paired loss full − full@delay.
type FreshnessReport struct {
	K                         int              `json:"k"`
	Discovery                 []FreshnessPoint `json:"discovery"`
	Reengagement              []FreshnessPoint `json:"reengagement"`
	ReengagementKeepPurchased []FreshnessPoint `json:"reengagement_keep_purchased"`
}

// FreshnessPoint is full at one delay.
type FreshnessPoint struct {
	Delay  string     `json:"delay"` // "0s", "1m", "24h"
	MS     int64      `json:"ms"`
	Method string     `json:"method"` // full, full@1m, …
	NDCG   float64    `json:"ndcg"`
	NDCGCI [2]float64 `json:"ndcg_ci"`
	HR     float64    `json:"hr"`
	HRCI   [2]float64 `json:"hr_ci"`
	// VsFull is full − this point in NDCG@K, paired: what the delay
	// costs (null at delay 0, or without full).
	VsFull *PairedDelta `json:"vs_full"`
}

// freshness collects the curve from the variants' delayed methods; delay
// 0 is full, when it was evaluated.
func freshness(rep *Report, delays []time.Duration, k int) *FreshnessReport {
	f := &FreshnessReport{K: k}
	points := func(v *VariantReport) []FreshnessPoint {
		out := []FreshnessPoint{}
		for _, d := range append([]time.Duration{0}, delays...) {
			if d == 0 && len(out) > 0 {
				continue // 0 given in the delays as well
			}
			m := DelayedMethod(d)
			vals, ok := v.Methods[m]
			if !ok {
				continue
			}
			p := FreshnessPoint{Delay: FormatDelay(d), MS: d.Milliseconds(), Method: m,
				NDCG: vals[fmt.Sprintf("ndcg@%d", k)], NDCGCI: v.Intervals[m][fmt.Sprintf("ndcg@%d", k)],
				HR: vals[fmt.Sprintf("hr@%d", k)], HRCI: v.Intervals[m][fmt.Sprintf("hr@%d", k)]}
			if pd, ok := v.VsFull[m]; ok {
				p.VsFull = &pd
			}
			out = append(out, p)
		}
		return out
	}
	f.Discovery, f.Reengagement, f.ReengagementKeepPurchased = points(rep.Discovery), points(rep.Reengagement), points(rep.ReengagementKeepPurchased)
	return f
}

// Best returns the method other than full with the highest value of
// metric, and that value ("" when there is none).
func (v *VariantReport) Best(metric string) (string, float64) {
	best, val := "", math.Inf(-1)
	for _, m := range v.methodOrder() {
		if m == MethodFull || m == MethodFullFrozen || strings.HasPrefix(m, MethodFull+"@") {
			continue
		}
		if x := v.Methods[m][metric]; x > val {
			best, val = m, x
		}
	}
	return best, val
}

func (v *VariantReport) methodOrder() []string {
	if v.order != nil {
		return v.order
	}
	var out []string
	for _, m := range Methods {
		if _, ok := v.Methods[m]; ok {
			out = append(out, m)
		}
	}
	return out
}

func orNaN(f *float64) float64 {
	if f == nil {
		return math.NaN()
	}
	return *f
}

// WriteText prints the report as tables, one per variant.
func (rep *Report) WriteText(w io.Writer, ks []int, rejected int) {
	fmt.Fprintf(w, "events %d (rejected %d), users %d, items %d; evaluation from %s; %.1f s; ranker rolling AUC %.4f, log loss %.4f\n",
		rep.Events, rejected, rep.Users, rep.Items, rep.WarmupEnd, rep.Seconds, orNaN(rep.RankerAUC), orNaN(rep.RankerLogLoss))
	names := make([]string, 0, len(rep.RankerWeights))
	for n := range rep.RankerWeights {
		names = append(names, n)
	}
	slices.Sort(names)
	if len(names) > 0 {
		fmt.Fprint(w, "ranker weights:")
		for _, n := range names {
			fmt.Fprintf(w, " %s=%.3f", n, rep.RankerWeights[n])
		}
		fmt.Fprintln(w)
	}
	b := rep.Baselines
	fmt.Fprintf(w, "baselines: rebuilt every %gh (%d builds), history %d, itemknn neighbours %d, als factors %d iterations %d reg %g alpha %g cg steps %d\n",
		b.RebuildHours, b.Builds, b.History, b.KNNNeighbors, b.ALSFactors, b.ALSIterations, b.ALSReg, b.ALSAlpha, b.ALSCGSteps)
	keys := []string{}
	for _, k := range ks {
		keys = append(keys, fmt.Sprintf("hr@%d", k), fmt.Sprintf("ndcg@%d", k))
	}
	keys = append(keys, "mrr")
	for _, v := range []struct {
		name string
		r    *VariantReport
	}{{"discovery", rep.Discovery}, {"re-engagement (purchased items dropped)", rep.Reengagement},
		{"re-engagement, purchased items kept", rep.ReengagementKeepPurchased},
		{"views, discovery", rep.Views.Discovery}, {"views, re-engagement", rep.Views.Reengagement}} {
		if v.r == nil {
			continue
		}
		fmt.Fprintf(w, "\n%s: %d targets\n", v.name, v.r.Targets)
		if v.r == rep.ReengagementKeepPurchased {
			fmt.Fprintf(w, "  (%d of them on an item the user had bought)\n", rep.RepurchaseTargets)
		}
		fmt.Fprintf(w, "  %-15s", "method")
		for _, k := range ks {
			fmt.Fprintf(w, " %-22s %-22s", fmt.Sprintf("HR@%d", k), fmt.Sprintf("NDCG@%d", k))
		}
		fmt.Fprintf(w, " %-22s\n", "MRR")
		for _, m := range v.r.methodOrder() {
			fmt.Fprintf(w, "  %-15s", m)
			for _, key := range keys {
				ci := v.r.Intervals[m][key]
				fmt.Fprintf(w, " %-22s", fmt.Sprintf("%.4f [%.4f,%.4f]", v.r.Methods[m][key], ci[0], ci[1]))
			}
			fmt.Fprintln(w)
		}
		if len(v.r.VsFull) == 0 {
			continue
		}
		fmt.Fprint(w, "  full − method, paired:")
		for _, m := range v.r.methodOrder() {
			if d, ok := v.r.VsFull[m]; ok {
				fmt.Fprintf(w, "  %s %+.4f [%+.4f,%+.4f]", m, d.Mean, d.CI[0], d.CI[1])
			}
		}
		fmt.Fprintf(w, " (NDCG@%d)\n", ks[0])
		if best, _ := v.r.Best(fmt.Sprintf("ndcg@%d", ks[0])); best != "" {
			d := v.r.VsFull[best]
			verdict := "full is better"
			switch {
			case d.CI[1] < 0:
				verdict = best + " is better"
			case d.CI[0] <= 0:
				verdict = "no significant difference"
			}
			fmt.Fprintf(w, "  best other method: %s; full − %s %+.4f [%+.4f,%+.4f]: %s\n", best, best, d.Mean, d.CI[0], d.CI[1], verdict)
		}
	}
	if f := rep.Freshness; f != nil {
		fmt.Fprintf(w, "\nfreshness: full served from the whole store as it was each delay before the target\n")
		fmt.Fprintf(w, "  %-28s %-8s %-26s %-26s %s\n", "variant", "delay", fmt.Sprintf("NDCG@%d", f.K), fmt.Sprintf("HR@%d", f.K), "full − delayed, paired")
		for _, v := range []struct {
			name   string
			points []FreshnessPoint
		}{{"discovery", f.Discovery}, {"re-engagement", f.Reengagement}, {"re-engagement, kept bought", f.ReengagementKeepPurchased}} {
			for _, p := range v.points {
				loss := "-"
				if p.VsFull != nil {
					loss = fmt.Sprintf("%+.4f [%+.4f,%+.4f]", p.VsFull.Mean, p.VsFull.CI[0], p.VsFull.CI[1])
				}
				fmt.Fprintf(w, "  %-28s %-8s %-26s %-26s %s\n", v.name, p.Delay,
					fmt.Sprintf("%.4f [%.4f,%.4f]", p.NDCG, p.NDCGCI[0], p.NDCGCI[1]),
					fmt.Sprintf("%.4f [%.4f,%.4f]", p.HR, p.HRCI[0], p.HRCI[1]), loss)
			}
		}
	}
}
