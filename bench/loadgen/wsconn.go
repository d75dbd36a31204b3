package main

// A WebSocket client on raw non-blocking sockets driven by one epoll loop (Linux): every socket is
// read once per readiness and all the frames in what arrived are handled at once, with no goroutine,
// channel or timer per socket or per frame. On a machine where each wake-up of a thread costs tens
// of microseconds, that is most of what the tool costs per message.

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA

	closeNormal   = 1000
	closeAbnormal = 1006

	readChunk       = 64 << 10
	wsGUID          = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
	sysEpollPwait2  = 441 // the same number on every Linux architecture Go supports
	handshakeBudget = 30 * time.Second
)

type conn struct {
	index    int // in loop.conns
	fd       int
	in       []byte // bytes read and not yet handled: in[start:]
	start    int
	message  []byte // a fragmented message being put together
	fragOp   byte
	out      []byte // frames the socket did not take yet (written when it is writable again)
	wantOut  bool
	closed   bool
	code     int
	reason   string
	lastSent time.Time
	nextID   int64
	mask     uint32
	onFrame  func(payload []byte, arrived int64)
}

// dialError is a connection that did not open, named as bench.client.connect_error_kind names it.
type dialError struct{ kind string }

func (e *dialError) Error() string { return e.kind }

// dial opens a socket and does the client handshake with the standard library (deadlines, signals),
// then takes the socket out of Go's poller: the loop owns a duplicate of its descriptor from then on.
func dial(rawURL string) (*conn, error) {
	target, err := url.Parse(rawURL)
	if err != nil || (target.Scheme != "ws" && target.Scheme != "http") {
		return nil, &dialError{fmt.Sprintf("bad url %q", rawURL)}
	}
	host := target.Host
	if target.Port() == "" {
		host = net.JoinHostPort(target.Hostname(), "80")
	}
	deadline := time.Now().Add(handshakeBudget)
	netConn, err := (&net.Dialer{Deadline: deadline}).Dial("tcp", host)
	if err != nil {
		return nil, dialErrorOf(err)
	}
	defer netConn.Close() // the loop keeps its duplicate
	tcp := netConn.(*net.TCPConn)
	_ = tcp.SetDeadline(deadline)
	_ = tcp.SetNoDelay(true)
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	request := "GET " + target.RequestURI() + " HTTP/1.1\r\nHost: " + target.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\nUser-Agent: courier-bench-loadgen\r\n\r\n"
	if _, err := tcp.Write([]byte(request)); err != nil {
		return nil, dialErrorOf(err)
	}
	reader := bufio.NewReaderSize(tcp, 4096)
	response, err := http.ReadResponse(reader, &http.Request{Method: http.MethodGet})
	if err != nil {
		return nil, dialErrorOf(err)
	}
	if response.StatusCode != http.StatusSwitchingProtocols {
		return nil, &dialError{"http " + strconv.Itoa(response.StatusCode)}
	}
	digest := sha1.Sum([]byte(key + wsGUID))
	if response.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(digest[:]) ||
		!strings.EqualFold(response.Header.Get("Upgrade"), "websocket") {
		return nil, &dialError{"bad handshake"}
	}
	c := &conn{fd: -1, lastSent: time.Now()}
	if n := reader.Buffered(); n > 0 { // frames the server sent right behind its answer
		buffered, _ := reader.Peek(n)
		c.in = append(c.in, buffered...)
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return nil, dialErrorOf(err)
	}
	var dupErr error
	if err := raw.Control(func(fd uintptr) { c.fd, dupErr = syscall.Dup(int(fd)) }); err != nil || dupErr != nil {
		return nil, dialErrorOf(errors.Join(err, dupErr))
	}
	syscall.CloseOnExec(c.fd)
	if err := syscall.SetNonblock(c.fd, true); err != nil {
		_ = syscall.Close(c.fd)
		return nil, dialErrorOf(err)
	}
	var seed [4]byte
	_, _ = rand.Read(seed[:])
	c.mask = binary.LittleEndian.Uint32(seed[:]) | 1
	return c, nil
}

// dialErrorOf names a failure to connect as bench.client.connect_error_kind does.
func dialErrorOf(err error) error {
	var errno syscall.Errno
	var netErr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return &dialError{"connection refused"}
	case errors.As(err, &netErr) && netErr.Timeout():
		return &dialError{"handshake timeout"}
	case errors.As(err, &errno):
		return &dialError{"os error " + strconv.Itoa(int(errno))}
	}
	return &dialError{fmt.Sprintf("%T", err)}
}

// appendFrame appends one masked client frame (a client must mask, RFC 6455 5.3).
func (c *conn) appendFrame(buf []byte, op byte, payload []byte) []byte {
	buf = append(buf, 0x80|op)
	switch n := len(payload); {
	case n < 126:
		buf = append(buf, 0x80|byte(n))
	case n <= 0xFFFF:
		buf = append(buf, 0x80|126, byte(n>>8), byte(n))
	default:
		buf = append(buf, 0x80|127)
		buf = binary.BigEndian.AppendUint64(buf, uint64(n))
	}
	c.mask ^= c.mask << 13 // xorshift: a new key per frame, cheap
	c.mask ^= c.mask >> 17
	c.mask ^= c.mask << 5
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], c.mask)
	buf = append(buf, key[:]...)
	at := len(buf)
	buf = append(buf, payload...)
	for i := range payload {
		buf[at+i] ^= key[i&3]
	}
	return buf
}

// loop is the epoll set of every socket.
type loop struct {
	epfd     int
	conns    []*conn
	events   []syscall.EpollEvent
	scratch  []byte
	noPwait  bool
	onClosed func(*conn)
}

func newLoop() (*loop, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return &loop{epfd: epfd, events: make([]syscall.EpollEvent, 256)}, nil
}

func (l *loop) add(c *conn) error {
	c.index = len(l.conns)
	l.conns = append(l.conns, c)
	return syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, c.fd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(c.index)})
}

// wait blocks until a socket is ready or `timeout` passed, then handles what is ready. The wait is a
// raw system call: the loop's goroutine keeps the scheduler's only P (GOMAXPROCS 1) while it waits,
// so no other thread is woken to take it over and back, and a signal (the runtime's preemption)
// only ends the wait early.
func (l *loop) wait(timeout time.Duration) {
	timeout = max(timeout, 0)
	n, err := l.pwait(timeout)
	if err != nil {
		return // EINTR: the caller loops
	}
	arrived := time.Now().UnixNano()
	for _, event := range l.events[:n] {
		c := l.conns[event.Fd]
		if event.Events&syscall.EPOLLOUT != 0 {
			l.flush(c)
		}
		if event.Events&(syscall.EPOLLIN|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
			l.read(c, arrived)
		}
	}
}

func (l *loop) pwait(timeout time.Duration) (int, error) {
	if !l.noPwait {
		spec := syscall.NsecToTimespec(timeout.Nanoseconds())
		n, _, errno := syscall.RawSyscall6(sysEpollPwait2, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])),
			uintptr(len(l.events)), uintptr(unsafe.Pointer(&spec)), 0, 0)
		if errno == 0 {
			return int(n), nil
		}
		if errno != syscall.ENOSYS {
			return 0, errno
		}
		l.noPwait = true // before Linux 5.11: millisecond timeouts, rounded up
	}
	n, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])),
		uintptr(len(l.events)), uintptr((timeout+time.Millisecond-1)/time.Millisecond), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// rawRead and rawWrite are read(2) and write(2) on non-blocking sockets without telling the Go
// scheduler: they never block, and the hand-off of the scheduler's P around a "blocking" call (a
// futex wake-up of another thread) would cost more than the call itself.
func rawRead(fd int, p []byte) (int, error) { return rawIO(syscall.SYS_READ, fd, p) }

func rawWrite(fd int, p []byte) (int, error) { return rawIO(syscall.SYS_WRITE, fd, p) }

func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, errno := syscall.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func (l *loop) read(c *conn, arrived int64) {
	if c.closed {
		return
	}
	if c.start > 0 && c.start == len(c.in) {
		c.in, c.start = c.in[:0], 0
	}
	if cap(c.in)-len(c.in) < readChunk/2 {
		live := len(c.in) - c.start
		if live+readChunk <= cap(c.in) {
			c.in = c.in[:copy(c.in, c.in[c.start:])]
		} else {
			grown := make([]byte, live, max(2*cap(c.in), live+readChunk))
			copy(grown, c.in[c.start:])
			c.in = grown
		}
		c.start = 0
	}
	n, err := rawRead(c.fd, c.in[len(c.in):cap(c.in)])
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
		return
	}
	if err != nil || n == 0 {
		l.drop(c, closeAbnormal, "")
		return
	}
	c.in = c.in[:len(c.in)+n]
	l.parse(c, arrived)
}

// parse handles every whole frame in c.in.
func (l *loop) parse(c *conn, arrived int64) {
	for !c.closed {
		data := c.in[c.start:]
		if len(data) < 2 {
			return
		}
		fin, op := data[0]&0x80 != 0, data[0]&0x0F
		size, head := uint64(data[1]&0x7F), 2
		switch size {
		case 126:
			if len(data) < 4 {
				return
			}
			size, head = uint64(binary.BigEndian.Uint16(data[2:])), 4
		case 127:
			if len(data) < 10 {
				return
			}
			size, head = binary.BigEndian.Uint64(data[2:]), 10
		}
		if data[1]&0x80 != 0 { // a server must not mask
			l.drop(c, 1002, "masked frame from the server")
			return
		}
		if size > maxFrameBytes {
			l.drop(c, 1009, "frame too large")
			return
		}
		if uint64(len(data)-head) < size {
			return
		}
		payload := data[head : head+int(size)]
		c.start += head + int(size)
		switch op {
		case opText, opBinary:
			if fin {
				c.onFrame(payload, arrived)
			} else {
				c.fragOp, c.message = op, append(c.message[:0], payload...)
			}
		case opContinuation:
			c.message = append(c.message, payload...)
			if fin {
				c.onFrame(c.message, arrived)
				c.message = c.message[:0]
			}
		case opPing:
			l.send(c, opPong, payload)
		case opClose:
			code, reason := 1005, ""
			if len(payload) >= 2 {
				code, reason = int(binary.BigEndian.Uint16(payload)), string(payload[2:])
			}
			l.send(c, opClose, payload[:min(2, len(payload))])
			l.drop(c, code, reason)
			return
		}
	}
}

// send writes one frame now, or queues it behind what the socket has not taken yet; false when
// the socket is closed.
func (l *loop) send(c *conn, op byte, payload []byte) bool {
	if c.closed {
		return false
	}
	c.lastSent = time.Now()
	queued := len(c.out) > 0
	c.out = c.appendFrame(c.out, op, payload)
	if !queued { // else the socket is full and the loop waits for it to be writable
		l.flush(c)
	}
	return !c.closed
}

// flush writes what the socket will take of c.out; it waits for EPOLLOUT while anything is left.
func (l *loop) flush(c *conn) {
	written := 0
	for written < len(c.out) && !c.closed {
		n, err := rawWrite(c.fd, c.out[written:])
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if errors.Is(err, syscall.EAGAIN) {
			break
		}
		if err != nil {
			l.drop(c, closeAbnormal, "")
			return
		}
		written += n
	}
	c.out = c.out[:copy(c.out, c.out[written:])]
	if want := len(c.out) > 0 && !c.closed; want != c.wantOut {
		c.wantOut = want
		events := uint32(syscall.EPOLLIN)
		if want {
			events |= syscall.EPOLLOUT
		}
		_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_MOD, c.fd, &syscall.EpollEvent{Events: events, Fd: int32(c.index)})
	}
}

// drop closes a socket the server closed or broke; onClosed hears of it.
func (l *loop) drop(c *conn, code int, reason string) {
	if c.closed {
		return
	}
	c.closed, c.code, c.reason = true, code, reason
	_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
	_ = syscall.Close(c.fd)
	if l.onClosed != nil {
		l.onClosed(c)
	}
}

// closeAll says goodbye (close 1000) on every open socket and closes it without waiting for the answer.
func (l *loop) closeAll() {
	l.onClosed = nil
	for _, c := range l.conns {
		if c.closed {
			continue
		}
		if !l.send(c, opClose, binary.BigEndian.AppendUint16(nil, closeNormal)) {
			continue // it broke on the way (and was closed)
		}
		c.closed = true
		_ = syscall.Close(c.fd)
	}
	_ = syscall.Close(l.epfd)
}
