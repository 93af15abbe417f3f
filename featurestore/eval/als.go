package eval

import (
	"math"
	"math/rand/v2"
	"runtime"
)

// als is implicit-feedback matrix factorization by alternating least
// squares (Hu, Koren and Volinsky 2008): every (user, item) pair is
// observed with preference 1 and confidence 1 + alpha·strength, every
// other pair with preference 0 and confidence 1. Each half-step solves
// every vector by a few conjugate-gradient steps warm-started from its
// current value (Takács, Pilászy and Tikk 2011), so a half-step costs
// O(f² + f·ratings) per vector instead of O(f³).
//
// Rebuilt from scratch at each rebuild. A user is folded in at query
// time, from their current history and the built item factors (an exact
// least-squares solve), so a user who arrived after the build, or whose
// history moved on, is scored by today's history; items that arrived
// after the build have no factors and are not recommended until the
// next build.
type als struct {
	o     *BaselineOptions
	items []float64 // item factors, by item id, f per item
	has   []bool    // the item had ratings at the build
	gram  []float64 // VᵀV + λI of the built items, f×f
	built bool
}

type rating struct {
	idx int32
	c   float64 // alpha·strength: the confidence minus 1
}

func (m *als) build(h *histories) {
	f := m.o.ALSFactors
	users := sortedUsers(h)
	nI := len(h.names)
	userR := make([][]rating, len(users))
	itemR := make([][]rating, nI)
	for ui, u := range users {
		for _, it := range u.newest(m.o.History) {
			c := m.o.ALSAlpha * float64(strength(it.w))
			userR[ui] = append(userR[ui], rating{it.item, c})
			itemR[it.item] = append(itemR[it.item], rating{int32(ui), c})
		}
	}
	rng := rand.New(rand.NewPCG(0xa15, 0x5eed))
	initial := func(n int) []float64 {
		x := make([]float64, n*f)
		for i := range x {
			x[i] = (rng.Float64() - 0.5) * 0.1 / math.Sqrt(float64(f))
		}
		return x
	}
	U, V := initial(len(users)), initial(nI)
	for range m.o.ALSIterations {
		m.halfStep(U, V, userR)
		m.halfStep(V, U, itemR)
	}
	m.items = V
	m.has = make([]bool, nI)
	for i, r := range itemR {
		m.has[i] = len(r) > 0
	}
	m.gram = gramian(V, f, m.o.ALSReg, m.has)
	m.built = true
}

// gramian returns YᵀY + λI over the rows of Y (f wide) for which use is
// true (all rows when use is nil).
func gramian(Y []float64, f int, lambda float64, use []bool) []float64 {
	g := make([]float64, f*f)
	for r := 0; r*f < len(Y); r++ {
		if use != nil && !use[r] {
			continue
		}
		y := Y[r*f : (r+1)*f]
		for a := range f {
			ya := y[a]
			row := g[a*f : (a+1)*f]
			for b := range f {
				row[b] += ya * y[b]
			}
		}
	}
	for a := range f {
		g[a*f+a] += lambda
	}
	return g
}

// halfStep solves every row of X against the fixed factors Y.
func (m *als) halfStep(X, Y []float64, R [][]rating) {
	f := m.o.ALSFactors
	G := gramian(Y, f, m.o.ALSReg, nil)
	// Rows are independent given Y: solved in chunks, one per CPU, each
	// with its own scratch; the result does not depend on the split.
	workers := min(runtime.GOMAXPROCS(0), max(1, len(R)/256))
	chunk := (len(R) + workers - 1) / workers
	_ = parallel(workers, func(w int) error {
		lo, hi := w*chunk, min(len(R), (w+1)*chunk)
		if lo < hi {
			m.solveRows(X, Y, R, G, lo, hi)
		}
		return nil
	})
}

// solveRows solves rows [lo, hi) of X (see halfStep).
func (m *als) solveRows(X, Y []float64, R [][]rating, G []float64, lo, hi int) {
	f := m.o.ALSFactors
	r := make([]float64, f)
	p := make([]float64, f)
	ap := make([]float64, f)
	for row := lo; row < hi; row++ {
		rs := R[row]
		x := X[row*f : (row+1)*f]
		if len(rs) == 0 {
			clear(x)
			continue
		}
		// A·v = G·v + Σ c·(y·v)·y; b = Σ (1 + c)·y.
		apply := func(v, out []float64) {
			matVec(G, v, out, f)
			for _, rt := range rs {
				y := Y[int(rt.idx)*f : (int(rt.idx)+1)*f]
				d := rt.c * dot(y, v)
				for k := range f {
					out[k] += d * y[k]
				}
			}
		}
		apply(x, ap)
		for k := range f {
			r[k] = -ap[k]
		}
		for _, rt := range rs {
			y := Y[int(rt.idx)*f : (int(rt.idx)+1)*f]
			for k := range f {
				r[k] += (1 + rt.c) * y[k]
			}
		}
		copy(p, r)
		rsOld := dot(r, r)
		for range m.o.ALSCGSteps {
			if rsOld < 1e-20 {
				break
			}
			apply(p, ap)
			alpha := rsOld / dot(p, ap)
			for k := range f {
				x[k] += alpha * p[k]
				r[k] -= alpha * ap[k]
			}
			rsNew := dot(r, r)
			for k := range f {
				p[k] = r[k] + rsNew/rsOld*p[k]
			}
			rsOld = rsNew
		}
	}
}

// foldIn solves the user's vector exactly from their history and the
// built item factors; nil when none of the user's items has factors.
func (m *als) foldIn(u *userHistory) []float64 {
	f := m.o.ALSFactors
	A := append([]float64(nil), m.gram...)
	b := make([]float64, f)
	any := false
	for _, it := range u.newest(m.o.History) {
		if int(it.item) >= len(m.has) || !m.has[it.item] {
			continue
		}
		any = true
		c := m.o.ALSAlpha * float64(strength(it.w))
		y := m.items[int(it.item)*f : (int(it.item)+1)*f]
		for a := range f {
			b[a] += (1 + c) * y[a]
			row := A[a*f : (a+1)*f]
			for k := range f {
				row[k] += c * y[a] * y[k]
			}
		}
	}
	if !any {
		return nil
	}
	return choleskySolve(A, b, f)
}

// scores is the user's folded-in vector against every built item.
func (m *als) scores(u *userHistory) []scoredItem {
	if !m.built {
		return nil
	}
	x := m.foldIn(u)
	if x == nil {
		return nil
	}
	f := m.o.ALSFactors
	out := make([]scoredItem, 0, len(m.has))
	for i, ok := range m.has {
		if ok {
			out = append(out, scoredItem{int32(i), float32(dot(x, m.items[i*f:(i+1)*f]))})
		}
	}
	return out
}

func dot(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

func matVec(A, v, out []float64, f int) {
	for a := range f {
		out[a] = dot(A[a*f:(a+1)*f], v)
	}
}

// choleskySolve solves A·x = b for a symmetric positive definite A (f×f,
// overwritten).
func choleskySolve(A, b []float64, f int) []float64 {
	for j := range f {
		s := A[j*f+j]
		for k := range j {
			s -= A[j*f+k] * A[j*f+k]
		}
		d := math.Sqrt(math.Max(s, 1e-12))
		A[j*f+j] = d
		for i := j + 1; i < f; i++ {
			t := A[i*f+j]
			for k := range j {
				t -= A[i*f+k] * A[j*f+k]
			}
			A[i*f+j] = t / d
		}
	}
	x := make([]float64, f)
	for i := range f { // L·y = b
		t := b[i]
		for k := range i {
			t -= A[i*f+k] * x[k]
		}
		x[i] = t / A[i*f+i]
	}
	for i := f - 1; i >= 0; i-- { // Lᵀ·x = y
		t := x[i]
		for k := i + 1; k < f; k++ {
			t -= A[k*f+i] * x[k]
		}
		x[i] = t / A[i*f+i]
	}
	return x
}
