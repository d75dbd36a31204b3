package main

import "testing"

// An event due exactly now fires whatever the rounding: event 33433 is due at start + 33433/100, but
// (due - start) * 100 rounds to a hair below 33433. Without that, runStep's firing loop never ends.
func TestAnEventDueExactlyNowFiresWhateverTheRounding(t *testing.T) {
	p := pacer{rate: 100, start: 134.36424411240122, maxLag: 1e9, fired: 33433}
	now := p.nextAt()
	if int((now-p.start)*p.rate)+1 != p.fired {
		t.Fatalf("the rounding this test is about did not happen")
	}
	if got := p.due(now); got != 1 {
		t.Fatalf("due(nextAt()) = %d, want 1", got)
	}
	if p.nextAt() <= now {
		t.Fatalf("nextAt() = %v, still not after %v", p.nextAt(), now)
	}
}
