package main

// pacer is bench/pacing.py's Pacer: event k is due at start + k/rate whatever the server does; when
// more than maxLag seconds of events are overdue (the tool fell behind), the oldest are skipped and
// counted, so the offered rate shows what was really attempted.
type pacer struct {
	rate, start, maxLag float64
	fired, skipped      int
}

func (p *pacer) at(index int) float64 { return p.start + float64(index)/p.rate }

// nextAt is when the next event is due (seconds on the run's monotonic clock).
func (p *pacer) nextAt() float64 { return p.at(p.fired + p.skipped) }

// due says how many events are due at now; they count as fired.
func (p *pacer) due(now float64) int {
	done := p.fired + p.skipped
	if now < p.at(done) {
		return 0
	}
	// Event `done` is due by the test above, even where rounding puts (now-start)*rate a hair below
	// `done`: without the max nothing would fire, nextAt would stay in the past, and runStep, which
	// fires until nextAt is ahead of now, would spin forever.
	overdue := max(int((now-p.start)*p.rate)+1, done+1) - done
	allowed := max(1, int(p.maxLag*p.rate))
	if overdue > allowed {
		p.skipped += overdue - allowed
		overdue = allowed
	}
	p.fired += overdue
	return overdue
}
