package synth

import (
	"math"
	"strconv"
	"strings"
)

// This file holds the deterministic building blocks: a stateless hash, a
// portable power function, Walker/Vose alias tables with integer thresholds,
// and compact id-string tables.
//
// Cross-machine determinism: all per-event decisions use integer arithmetic
// on PCG output. Floating point is only used while building tables, and
// there every product that feeds an addition is wrapped in float64(...),
// which (per the Go spec) forbids the compiler from fusing it into an FMA on
// architectures such as arm64. math.Log/math.Exp have per-architecture
// assembly, so a pure-Go port of the fdlibm algorithms is used instead.

const golden = 0x9E3779B97F4A7C15

// mix is the splitmix64 finaliser, a fast bijective 64-bit hash.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xBF58476D1CE4E5B9
	x ^= x >> 27
	x *= 0x94D049BB133111EB
	x ^= x >> 31
	return x
}

// probThreshold maps p in [0,1] to t such that P(u64 < t) ~= p.
func probThreshold(p float64) uint64 {
	switch {
	case !(p > 0):
		return 0
	case p >= 1:
		return math.MaxUint64
	}
	// Scale to 2^63 so the conversion stays in int64 range (exact, no
	// compiler-inserted fused ops on any architecture).
	return uint64(int64(p*0x1p63)) << 1
}

// zipfWeight returns k^-s for k >= 1.
func zipfWeight(k, s float64) float64 {
	if k == 1 {
		return 1
	}
	return detExp(float64(-s * detLog(k)))
}

// detLog is the fdlibm/Go log algorithm for finite x > 0, written so the
// compiler cannot fuse operations.
func detLog(x float64) float64 {
	const (
		Ln2Hi = 6.93147180369123816490e-01
		Ln2Lo = 1.90821492927058770002e-10
		L1    = 6.666666666666735130e-01
		L2    = 3.999999999940941908e-01
		L3    = 2.857142874366239149e-01
		L4    = 2.222219843214978396e-01
		L5    = 1.818357216161805012e-01
		L6    = 1.531383769920937332e-01
		L7    = 1.479819860511658591e-01
	)
	f1, ki := math.Frexp(x) // exact
	if f1 < math.Sqrt2/2 {
		f1 *= 2
		ki--
	}
	f := f1 - 1
	k := float64(ki)
	s := f / (2 + f)
	s2 := float64(s * s)
	s4 := float64(s2 * s2)
	t1 := float64(s2 * (L1 + float64(s4*(L3+float64(s4*(L5+float64(s4*L7)))))))
	t2 := float64(s4 * (L2 + float64(s4*(L4+float64(s4*L6)))))
	R := t1 + t2
	hfsq := float64(float64(0.5*f) * f)
	return float64(k*Ln2Hi) - ((hfsq - (float64(s*(hfsq+R)) + float64(k*Ln2Lo))) - f)
}

// detExp is the fdlibm/Go exp algorithm, written so the compiler cannot
// fuse operations.
func detExp(x float64) float64 {
	const (
		Ln2Hi     = 6.93147180369123816490e-01
		Ln2Lo     = 1.90821492927058770002e-10
		Log2e     = 1.44269504088896338700e+00
		Overflow  = 7.09782712893383973096e+02
		Underflow = -7.45133219101941108420e+02
		NearZero  = 1.0 / (1 << 28)
		P1        = 1.66666666666666657415e-01
		P2        = -2.77777777770155933842e-03
		P3        = 6.61375632143793436117e-05
		P4        = -1.65339022054652515390e-06
		P5        = 4.13813679705723846039e-08
	)
	switch {
	case math.IsNaN(x):
		return x
	case x > Overflow:
		return math.Inf(1)
	case x < Underflow:
		return 0
	case -NearZero < x && x < NearZero:
		return 1 + x
	}
	var k int
	switch {
	case x < 0:
		k = int(float64(Log2e*x) - 0.5)
	case x > 0:
		k = int(float64(Log2e*x) + 0.5)
	}
	hi := x - float64(float64(k)*Ln2Hi)
	lo := float64(float64(k) * Ln2Lo)
	r := hi - lo
	t := float64(r * r)
	c := r - float64(t*(P1+float64(t*(P2+float64(t*(P3+float64(t*(P4+float64(t*P5)))))))))
	y := 1 - ((lo - float64(r*c)/(2-c)) - hi)
	return math.Ldexp(y, k) // exact
}

// aliasTable samples an index in [0, n) with probability proportional to
// the build weights in O(1): one 64-bit random word per draw.
type aliasTable struct {
	thr   []uint32 // keep column i when the high 32 bits are < thr[i]
	alias []int32
}

// sample maps one uniformly random word to an index.
func (a *aliasTable) sample(r uint64) int32 {
	return aliasPick(a.thr, a.alias, r)
}

func aliasPick(thr []uint32, alias []int32, r uint64) int32 {
	i := (r & 0xFFFFFFFF) * uint64(len(thr)) >> 32
	if uint32(r>>32) < thr[i] {
		return int32(i)
	}
	return alias[i]
}

func newAliasTable(w []float64, sc *aliasScratch) aliasTable {
	a := aliasTable{thr: make([]uint32, len(w)), alias: make([]int32, len(w))}
	buildAlias(w, a.thr, a.alias, sc)
	return a
}

type aliasScratch struct {
	p            []float64
	small, large []int32
}

// buildAlias fills thr/alias (len(w) each) with Vose's method. Indices are
// local to w. Zero-sum weights degrade to uniform.
func buildAlias(w []float64, thr []uint32, alias []int32, sc *aliasScratch) {
	n := len(w)
	sum := 0.0
	for _, x := range w {
		sum += x
	}
	if !(sum > 0) || math.IsInf(sum, 0) {
		for i := range thr {
			thr[i], alias[i] = math.MaxUint32, int32(i)
		}
		return
	}
	fn := float64(n)
	p := append(sc.p[:0], w...)
	small, large := sc.small[:0], sc.large[:0]
	for i := range p {
		p[i] = float64(p[i]*fn) / sum
		if p[i] < 1 {
			small = append(small, int32(i))
		} else {
			large = append(large, int32(i))
		}
	}
	for len(small) > 0 && len(large) > 0 {
		s := small[len(small)-1]
		small = small[:len(small)-1]
		l := large[len(large)-1]
		thr[s], alias[s] = coinThreshold(p[s]), l
		p[l] = (p[l] + p[s]) - 1
		if p[l] < 1 {
			large = large[:len(large)-1]
			small = append(small, l)
		}
	}
	// Leftovers are (up to rounding) exactly 1: always keep.
	for _, i := range small {
		thr[i], alias[i] = math.MaxUint32, i
	}
	for _, i := range large {
		thr[i], alias[i] = math.MaxUint32, i
	}
	sc.p, sc.small, sc.large = p, small, large
}

func coinThreshold(p float64) uint32 {
	switch {
	case !(p > 0):
		return 0
	case p >= 1:
		return math.MaxUint32
	}
	return uint32(p * 0x1p32)
}

// idTable stores "<prefix><n>" for n in [1, count] in one backing string;
// get returns substrings, so producing an id never allocates.
type idTable struct {
	s   string
	off []uint32
}

func newIDTable(prefix byte, count int) idTable {
	var b strings.Builder
	b.Grow(count * (2 + len(strconv.Itoa(count))))
	off := make([]uint32, count+1)
	var scratch [20]byte
	for i := 1; i <= count; i++ {
		off[i-1] = uint32(b.Len())
		b.WriteByte(prefix)
		b.Write(strconv.AppendInt(scratch[:0], int64(i), 10))
	}
	off[count] = uint32(b.Len())
	return idTable{s: b.String(), off: off}
}

// get returns the id of 0-based index i.
func (t *idTable) get(i int32) string { return t.s[t.off[i]:t.off[i+1]] }
