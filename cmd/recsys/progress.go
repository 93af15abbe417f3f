package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/pflag"
	"golang.org/x/term"
)

// bindProgress adds the --progress flag of a long command.
func bindProgress(fs *pflag.FlagSet, mode *string) {
	fs.StringVar(mode, "progress", "auto", "progress in events with rate and ETA: auto (a bar when stderr is a terminal, else a line every 10 s), on (always a bar), off")
}

func checkProgress(mode string) error {
	if mode != "auto" && mode != "on" && mode != "off" {
		return fmt.Errorf("progress: %q is not auto, on or off", mode)
	}
	return nil
}

// progress shows how far a long command is, counted in units (events,
// records): a bar with the rate and the time left on a terminal, or a
// line every 10 s when stderr is not one (a log, CI). It is safe for
// concurrent use.
type progress struct {
	mu    sync.Mutex
	bar   *progressbar.ProgressBar
	w     io.Writer // line mode; nil: off
	name  string
	unit  string
	total int64 // ≤ 0: unknown
	done  int64
	start time.Time
	last  time.Time
}

// newProgress starts the progress of name over total units (≤ 0 when
// unknown) in mode (see bindProgress).
func newProgress(mode, name, unit string, total int64) *progress {
	p := &progress{name: name, unit: unit, total: total, start: time.Now()}
	p.last = p.start
	switch {
	case mode == "off":
	case mode == "on" || term.IsTerminal(int(os.Stderr.Fd())):
		max := total
		if max <= 0 {
			max = -1 // a spinner
		}
		p.bar = progressbar.NewOptions64(max,
			progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionSetDescription(name),
			progressbar.OptionSetItsString(unit),
			progressbar.OptionShowIts(),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionFullWidth(),
			progressbar.OptionClearOnFinish(),
		)
		_ = p.bar.RenderBlank() // starts its clock now, not at the first update
	default:
		p.w = os.Stderr
	}
	return p
}

// Add counts n more units done.
func (p *progress) Add(n int64) { p.Set(-1, n) }

// Set sets the units done to done (or, with done < 0, adds delta).
func (p *progress) Set(done, delta int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if done < 0 {
		done = p.done + delta
	}
	p.done = done
	if p.bar != nil {
		_ = p.bar.Set64(done)
		return
	}
	if p.w != nil && time.Since(p.last) >= 10*time.Second {
		p.last = time.Now()
		fmt.Fprintln(p.w, p.line())
	}
}

// Describe changes the bar's label (the phase of the command).
func (p *progress) Describe(s string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.name = s
	if p.bar != nil {
		p.bar.Describe(s)
	}
}

func (p *progress) line() string {
	el := time.Since(p.start)
	rate := float64(p.done) / max(el.Seconds(), 1e-9)
	if p.total <= 0 {
		return fmt.Sprintf("%s: %d %s, %.0f %s/s", p.name, p.done, p.unit, rate, p.unit)
	}
	left := "?"
	if rate > 0 {
		left = time.Duration(float64(p.total-p.done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	return fmt.Sprintf("%s: %d/%d %s (%.0f%%), %.0f %s/s, %s left", p.name, p.done, p.total, p.unit,
		100*float64(p.done)/float64(p.total), rate, p.unit, left)
}

// every calls fn now and then every d until the returned stop is called;
// stop returns once fn has returned for the last time, so that nothing it
// reports can come after what the caller does next.
func every(d time.Duration, fn func()) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		for {
			fn()
			select {
			case <-done:
				return
			case <-time.After(d):
			}
		}
	}()
	return func() { close(done); <-exited }
}

// Finish ends the bar (it is cleared; the command prints its summary).
func (p *progress) Finish() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		_ = p.bar.Finish()
		_ = p.bar.Clear()
	}
}
