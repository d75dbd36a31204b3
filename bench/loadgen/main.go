// Command loadgen is the hot loop of `python -m bench throughput` in Go: paced senders, receivers
// that ack cumulatively, and the send-to-receive latency, on the WebSocket protocol of
// docs/protocol.md exactly as bench/client.py speaks it. Users, logins, conversations, the server's
// CPU and the report stay in Python (bench/loadgen.py, bench/scenarios/throughput.py).
//
// It reads one JSON job on stdin and writes one JSON result on stdout; while it runs it writes a
// `progress {...}` line on stderr every second, and anything else on stderr is a diagnostic.
//
// One goroutine does all the work after the sockets are open: an epoll loop (wsconn.go) that fires
// the sends that are due, reads what arrived and acks it. Linux only, like the rest of bench/.
package main

import (
	"bufio"
	"container/heap"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"sync"
	"time"
)

const (
	maxFrameBytes = 8 << 20
	lagEvery      = 0.010 // s between two samples of the loop's lateness
	resultVersion = 1
)

// Job is what the Python scenario passes (bench/loadgen.py: job()).
type Job struct {
	WSURL          string    `json:"ws_url"`
	Pairs          []PairJob `json:"pairs"`
	Rates          []float64 `json:"rates"`
	WarmupS        float64   `json:"warmup_s"`
	DurationS      float64   `json:"duration_s"`
	DrainS         float64   `json:"drain_s"`
	PauseS         float64   `json:"pause_s"`
	TextSize       int       `json:"text_size"`
	MaxInflight    int       `json:"max_inflight"`
	RampRate       float64   `json:"ramp_rate"`
	Handshakes     int       `json:"handshakes"`
	Tag            string    `json:"tag"`
	PingEveryS     float64   `json:"ping_every_s"`
	ProgressEveryS float64   `json:"progress_every_s"`
}

// PairJob is one direct conversation: who sends, who receives.
type PairJob struct {
	SenderToken    string `json:"sender_token"`
	ReceiverToken  string `json:"receiver_token"`
	ConversationID string `json:"conversation_id"`
}

// StepResult is what one rate step saw; times are microseconds after WallStart (epoch seconds).
type StepResult struct {
	Rate          float64        `json:"rate"`
	WallStart     float64        `json:"wall_start"`
	Window        [2]float64     `json:"window"`
	SentTotal     int            `json:"sent_total"`
	SentInWindow  int            `json:"sent_in_window"`
	AckedInWindow int            `json:"acked_in_window"`
	SentUs        []int64        `json:"sent_us"`    // per received message: when it was sent
	LatencyUs     []int64        `json:"latency_us"` // ... and how long it took to arrive
	AckRttUs      []int64        `json:"ack_rtt_us"`
	Duplicates    int            `json:"duplicates"`
	Throttled     int            `json:"throttled"`
	Skipped       int            `json:"skipped"`
	Errors        map[string]int `json:"errors"`
	LagUs         []int64        `json:"lag_us"`
}

// Result is the one JSON object written on stdout.
type Result struct {
	Version   int            `json:"version"`
	GoVersion string         `json:"go_version"`
	Senders   int            `json:"senders"`
	Receivers int            `json:"receivers"`
	Steps     []*StepResult  `json:"steps"`
	Errors    map[string]int `json:"errors"` // connects that failed, sockets the server closed
}

type step struct {
	StepResult
	wallNs           int64
	winStart, winEnd int64
	receivedOfWindow int
}

func (s *step) inWindow(ns int64) bool { return s.winStart <= ns && ns < s.winEnd }

type pair struct {
	index    int
	cid      string
	cidJSON  []byte
	sender   *conn
	receiver *conn
	pending  map[int64]int64 // frame id -> wall ns sent
	seen     map[int64]struct{}
	number   int64
	highest  int64
	acked    int64
	dirty    bool
	pacer    pacer
}

type run struct {
	job          Job
	loop         *loop
	cur          *step
	pairs        []*pair
	errors       map[string]int
	base         time.Time
	pending      int // sends without an answer, over every pair
	dirty        []*pair
	buf          []byte
	status       func() map[string]any
	nextProgress float64
	nextPing     float64
	lastLag      float64
}

func (r *run) mono() float64 { return time.Since(r.base).Seconds() }

func main() {
	var job Job
	if err := json.NewDecoder(bufio.NewReader(os.Stdin)).Decode(&job); err != nil {
		fail("reading the job: %v", err)
	}
	if len(job.Pairs) == 0 || len(job.Rates) == 0 || job.WSURL == "" {
		fail("the job needs ws_url, pairs and rates")
	}
	for _, rate := range job.Rates {
		if rate <= 0 {
			fail("rates must be positive")
		}
	}
	if job.MaxInflight <= 0 {
		job.MaxInflight = 500
	}
	if job.Handshakes <= 0 {
		job.Handshakes = 100
	}
	if job.RampRate <= 0 {
		job.RampRate = 500
	}
	if job.ProgressEveryS <= 0 {
		job.ProgressEveryS = 1
	}
	if job.PingEveryS <= 0 {
		job.PingEveryS = 20
	}
	runtime.GOMAXPROCS(1)                                    // one goroutine does the work: no thread hand-offs
	if path := os.Getenv("LOADGEN_CPUPROFILE"); path != "" { // for working on the tool itself
		profile, err := os.Create(path)
		if err != nil {
			fail("cpu profile: %v", err)
		}
		if err := pprof.StartCPUProfile(profile); err != nil {
			fail("cpu profile: %v", err)
		}
		defer pprof.StopCPUProfile()
	}
	r := &run{job: job, errors: map[string]int{}, base: time.Now()}
	result, err := r.execute()
	if err != nil {
		fail("%v", err)
	}
	out := bufio.NewWriter(os.Stdout)
	if err := json.NewEncoder(out).Encode(result); err != nil {
		fail("writing the result: %v", err)
	}
	if err := out.Flush(); err != nil {
		fail("writing the result: %v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(2)
}

func (r *run) execute() (*Result, error) {
	for i, p := range r.job.Pairs {
		cidJSON, _ := json.Marshal(p.ConversationID)
		r.pairs = append(r.pairs, &pair{
			index: i, cid: p.ConversationID, cidJSON: cidJSON, pending: map[int64]int64{}, seen: map[int64]struct{}{},
		})
	}
	fmt.Fprintf(os.Stderr, "progress {\"phase\":\"connecting\"}\n")
	senders := r.openAll(func(i int) string { return r.job.Pairs[i].SenderToken })
	receivers := r.openAll(func(i int) string { return r.job.Pairs[i].ReceiverToken })
	l, err := newLoop()
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	r.loop = l
	l.onClosed = r.closed
	result := &Result{Version: resultVersion, GoVersion: runtime.Version(), Errors: r.errors}
	for i, p := range r.pairs {
		p.sender, p.receiver = senders[i], receivers[i]
		for _, c := range []*conn{p.sender, p.receiver} {
			if c == nil {
				continue
			}
			if err := l.add(c); err != nil {
				return nil, fmt.Errorf("epoll: %w", err)
			}
		}
		if p.sender != nil {
			result.Senders++
			p.sender.onFrame = r.senderFrame(p)
		}
		if p.receiver != nil {
			result.Receivers++
			p.receiver.onFrame = r.receiverFrame(p)
		}
	}
	now := time.Now().UnixNano()
	for _, c := range l.conns { // frames that came right behind the handshake
		l.parse(c, now)
	}
	r.status = func() map[string]any { return map[string]any{"phase": "connected"} }
	for i, rate := range r.job.Rates {
		if i > 0 {
			pause := r.mono() + r.job.PauseS
			for r.mono() < pause {
				r.poll(pause)
			}
		}
		result.Steps = append(result.Steps, r.runStep(rate))
	}
	l.closeAll()
	return result, nil
}

// openAll opens one socket per pair at the job's ramp rate, at most `handshakes` at once, as
// bench/scenarios/__init__.py's ramp does; failures are counted by kind.
func (r *run) openAll(token func(int) string) []*conn {
	conns := make([]*conn, len(r.pairs))
	slots := make(chan struct{}, r.job.Handshakes)
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := range r.pairs {
		if wait := time.Until(start.Add(seconds(float64(i) / r.job.RampRate))); wait > 0 {
			time.Sleep(wait)
		}
		slots <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-slots }()
			c, err := dial(r.job.WSURL + "?access_token=" + url.QueryEscape(token(i)))
			if err != nil {
				mu.Lock()
				r.errors["connect: "+err.Error()]++
				mu.Unlock()
				return
			}
			conns[i] = c
		}(i)
	}
	wg.Wait()
	return conns
}

// closed counts a socket the server closed or broke, as bench.scenarios.close_codes does.
func (r *run) closed(c *conn) {
	kind := "closed " + strconv.Itoa(c.code)
	if c.reason != "" {
		kind += " " + c.reason
	}
	r.errors[kind]++
}

// senderFrame matches send_acks and errors to the sends they answer (by ref), as Flow.on_sender_frame.
func (r *run) senderFrame(p *pair) func([]byte, int64) {
	return func(raw []byte, arrived int64) {
		var f frame
		if !decodeFrame(raw, &f) {
			return
		}
		ref, err := strconv.ParseInt(string(f.Ref), 10, 64)
		if err != nil {
			return
		}
		sent, ok := p.pending[ref]
		if !ok {
			return
		}
		delete(p.pending, ref)
		r.pending--
		st := r.cur
		if st == nil {
			return
		}
		switch f.Type {
		case "send_ack":
			st.AckRttUs = append(st.AckRttUs, (arrived-sent)/1000)
			if st.inWindow(sent) {
				st.AckedInWindow++
			}
		case "error":
			st.Errors["send: "+codeText(f.Code)]++
		}
	}
}

// codeText renders an error code as Python's f-string would ("None" when absent).
func codeText(code any) string {
	switch c := code.(type) {
	case nil:
		return "None"
	case string:
		return c
	default:
		b, _ := json.Marshal(c)
		return string(b)
	}
}

// receiverFrame records every new message of the pair's conversation (Flow.on_receiver_frame) and
// marks the pair for an ack at the end of the loop's turn (bench.client.Acker: one cumulative ack
// for all that came at once).
func (r *run) receiverFrame(p *pair) func([]byte, int64) {
	return func(raw []byte, arrived int64) {
		var f frame
		if !decodeFrame(raw, &f) || f.Type != "message" || f.ConversationID != p.cid {
			return
		}
		if f.Seq > p.highest {
			p.highest = f.Seq
			if !p.dirty {
				p.dirty = true
				r.dirty = append(r.dirty, p)
			}
		}
		st := r.cur
		if st == nil {
			return
		}
		if _, dup := p.seen[f.Seq]; dup {
			st.Duplicates++
			return
		}
		p.seen[f.Seq] = struct{}{}
		if sent, ok := sentAt(f.Content.Text); ok && sent >= st.wallNs {
			st.SentUs = append(st.SentUs, (sent-st.wallNs)/1000)
			st.LatencyUs = append(st.LatencyUs, (arrived-sent)/1000)
			if st.inWindow(sent) {
				st.receivedOfWindow++
			}
		}
	}
}

// sentAt reads the send time (ns) out of a stamped text, `bench <ns> xxx` (bench/payload.py).
func sentAt(text string) (int64, bool) {
	const prefix = "bench "
	if len(text) <= len(prefix) || text[:len(prefix)] != prefix {
		return 0, false
	}
	end := len(prefix)
	for end < len(text) && text[end] >= '0' && text[end] <= '9' {
		end++
	}
	if end == len(prefix) || (end < len(text) && text[end] != ' ') {
		return 0, false
	}
	ns, err := strconv.ParseInt(text[len(prefix):end], 10, 64)
	return ns, err == nil
}

func (r *run) flushAcks() {
	for _, p := range r.dirty {
		p.dirty = false
		if p.highest <= p.acked || p.receiver == nil {
			continue
		}
		p.acked = p.highest
		r.buf = append(r.buf[:0], `{"type":"ack","conversation_id":`...)
		r.buf = append(r.buf, p.cidJSON...)
		r.buf = append(r.buf, `,"seq":`...)
		r.buf = strconv.AppendInt(r.buf, p.acked, 10)
		r.buf = append(r.buf, '}')
		r.loop.send(p.receiver, opText, r.buf)
	}
	r.dirty = r.dirty[:0]
}

// poll runs one turn of the loop: waits for the sockets until `deadline` at the latest, handles what
// came, acks it, and writes progress and pings when they are due.
func (r *run) poll(deadline float64) {
	wake := min(deadline, r.nextProgress, r.nextPing)
	r.loop.wait(seconds(wake - r.mono()))
	r.flushAcks()
	now := r.mono()
	if now >= r.nextProgress {
		line, _ := json.Marshal(r.status())
		fmt.Fprintf(os.Stderr, "progress %s\n", line)
		r.nextProgress = now + r.job.ProgressEveryS
	}
	if now >= r.nextPing {
		r.ping()
		r.nextPing = now + r.job.PingEveryS/4
	}
}

// ping sends a `ping` frame on every socket that wrote nothing for ping_every_s (the server closes
// silent sockets after two minutes).
func (r *run) ping() {
	quiet := time.Now().Add(-seconds(r.job.PingEveryS))
	for _, c := range r.loop.conns {
		if c.closed || c.lastSent.After(quiet) {
			continue
		}
		c.nextID++
		r.buf = append(strconv.AppendInt(append(r.buf[:0], `{"type":"ping","id":`...), c.nextID, 10), '}')
		r.loop.send(c, opText, r.buf)
	}
}

// runStep offers `rate` msg/s for warm-up + duration, then waits up to the drain for what is
// outstanding (Flow.run_step).
func (r *run) runStep(rate float64) *StepResult {
	job := r.job
	started := r.mono()
	wallNs := time.Now().UnixNano()
	st := &step{wallNs: wallNs}
	st.winStart = wallNs + int64(job.WarmupS*1e9)
	st.winEnd = st.winStart + int64(job.DurationS*1e9)
	st.Rate = rate
	st.WallStart = float64(wallNs) / 1e9
	st.Window = [2]float64{float64(st.winStart) / 1e9, float64(st.winEnd) / 1e9}
	st.Errors = map[string]int{}
	r.cur = st
	until := started + job.WarmupS + job.DurationS
	total := job.WarmupS + job.DurationS
	r.status = func() map[string]any {
		elapsed := r.mono() - started
		phase := "measuring"
		if elapsed < job.WarmupS {
			phase = "warm-up"
		} else if elapsed > total {
			phase = "draining"
		}
		errs := 0
		for _, n := range st.Errors {
			errs += n
		}
		return map[string]any{
			"phase": phase, "rate": rate, "elapsed": elapsed, "total": total, "sent": st.SentTotal,
			"received": len(st.LatencyUs), "recent_p99_ms": recentP99(st.LatencyUs), "errors": errs,
		}
	}
	schedule := make(pacerHeap, len(r.pairs))
	for i, p := range r.pairs {
		p.pacer = pacer{rate: rate / float64(len(r.pairs)), start: started + float64(i)/rate, maxLag: 1}
		schedule[i] = p
	}
	heap.Init(&schedule)
	for {
		now := r.mono()
		if now >= until {
			break
		}
		first := true
		for schedule[0].pacer.nextAt() <= now {
			p := schedule[0]
			if first && now-r.lastLag >= lagEvery { // how late the loop fires what is due
				st.LagUs = append(st.LagUs, int64((now-p.pacer.nextAt())*1e6))
				r.lastLag = now
			}
			first = false
			r.send(p, p.pacer.due(now), st)
			heap.Fix(&schedule, 0)
		}
		r.poll(min(schedule[0].pacer.nextAt(), until))
	}
	for _, p := range r.pairs {
		st.Skipped += p.pacer.skipped
	}
	drainUntil := r.mono() + job.DrainS
	for r.mono() < drainUntil && r.outstanding(st) > 0 {
		r.poll(drainUntil)
	}
	r.cur = nil
	r.status = func() map[string]any { return map[string]any{"phase": "between steps"} }
	return &st.StepResult
}

// pacerHeap orders the pairs by when their next send is due.
type pacerHeap []*pair

func (h pacerHeap) Len() int           { return len(h) }
func (h pacerHeap) Less(a, b int) bool { return h[a].pacer.nextAt() < h[b].pacer.nextAt() }
func (h pacerHeap) Swap(a, b int)      { h[a], h[b] = h[b], h[a] }
func (h *pacerHeap) Push(x any)        { *h = append(*h, x.(*pair)) }
func (h *pacerHeap) Pop() any {
	old := *h
	last := old[len(old)-1]
	*h = old[:len(old)-1]
	return last
}

func recentP99(latencyUs []int64) any {
	recent := latencyUs[max(0, len(latencyUs)-200):]
	if len(recent) == 0 {
		return nil
	}
	ordered := append([]int64(nil), recent...)
	sort.Slice(ordered, func(a, b int) bool { return ordered[a] < ordered[b] })
	return float64(ordered[(len(ordered)-1)*99/100]) / 1000
}

func (r *run) outstanding(st *step) int {
	return r.pending + max(0, st.AckedInWindow-st.receivedOfWindow)
}

// send is Flow.send: `count` send frames, each stamped with its send time, unless the sender has
// max_inflight sends unanswered.
func (r *run) send(p *pair, count int, st *step) {
	c := p.sender
	if c == nil || c.closed {
		st.Errors["send: sender socket closed"] += count
		return
	}
	for range count {
		if len(p.pending) >= r.job.MaxInflight {
			st.Throttled++
			continue
		}
		p.number++
		c.nextID++
		now := time.Now().UnixNano()
		p.pending[c.nextID] = now
		r.pending++
		st.SentTotal++
		if st.inWindow(now) {
			st.SentInWindow++
		}
		r.buf = r.sendFrame(r.buf[:0], p, c.nextID, p.number, now)
		if !r.loop.send(c, opText, r.buf) {
			st.Errors["send: sender socket closed"]++
			return
		}
	}
}

func (r *run) sendFrame(buf []byte, p *pair, id, number, now int64) []byte {
	buf = append(buf, `{"type":"send","id":`...)
	buf = strconv.AppendInt(buf, id, 10)
	buf = append(buf, `,"conversation_id":`...)
	buf = append(buf, p.cidJSON...)
	buf = append(buf, `,"client_msg_id":"t`...)
	buf = append(buf, r.job.Tag...)
	buf = append(buf, '-')
	buf = strconv.AppendInt(buf, int64(p.index), 10)
	buf = append(buf, '-')
	buf = strconv.AppendInt(buf, number, 10)
	buf = append(buf, `","content":{"type":"text","text":"bench `...)
	head := len(buf)
	buf = strconv.AppendInt(buf, now, 10)
	buf = append(buf, ' ')
	for written := len("bench ") + len(buf) - head; written < r.job.TextSize; written++ {
		buf = append(buf, 'x')
	}
	return append(buf, `"}}`...)
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
