package main

/*
#include <stdlib.h>
#include "tsffi.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// discardFor bounds how long a connection whose caller stopped reading
// keeps draining the tailnet peer while the reply goes out.
const discardFor = 10 * time.Second

// copyBufs holds the splice buffers; 64 KiB matches the tailnet TCP window
// chunks well and keeps the per-connection cost at two buffers in flight.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// splice copies between a tailnet connection and the node's end of a
// socketpair until both directions finish. EOF in one direction becomes a
// half-close in the other, so request/response protocols that rely on
// shutdown(WR) work end to end.
func splice(n *node, tc net.Conn, uc *net.UnixConn) {
	if !n.track(tc) {
		tc.Close()
		uc.Close()
		return
	}
	defer n.untrack(tc)
	spliceStarted()
	defer spliceEnded()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // tailnet -> caller
		defer wg.Done()
		if err := copyHalf(uc, tc); err != nil {
			// The caller stopped reading, typically after answering and
			// closing (an oversized request, a denial). Closing tc now
			// would reset it before the other direction has delivered
			// that answer; instead discard what the peer still sends,
			// for a bounded time, and let the other direction finish.
			tc.SetReadDeadline(time.Now().Add(discardFor))
			io.Copy(io.Discard, tc)
			return
		}
		uc.CloseWrite()
	}()
	go func() { // caller -> tailnet
		defer wg.Done()
		if err := copyHalf(tc, uc); err != nil {
			tc.Close()
			uc.Close()
			return
		}
		if cw, ok := tc.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			tc.Close()
		}
	}()
	wg.Wait()
	tc.Close()
	uc.Close()
}

func copyHalf(dst io.Writer, src io.Reader) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	// Plain loop rather than io.CopyBuffer: io.Copy would prefer
	// ReadFrom/WriteTo and ignore our pooled buffer.
	buf := *bp
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			if _, werr := dst.Write(buf[:nr]); werr != nil {
				return werr
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// socketpair returns (node end as *net.UnixConn, caller end as raw fd).
func socketpair(typ int) (*net.UnixConn, int, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, typ|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, -1, fmt.Errorf("tsffi: socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "tsffi-pair")
	c, err := net.FileConn(f) // dups; close our copy below
	f.Close()
	if err != nil {
		syscall.Close(fds[1])
		return nil, -1, fmt.Errorf("tsffi: socketpair conn: %w", err)
	}
	return c.(*net.UnixConn), fds[1], nil
}

// listener forwards accepted tailnet connections to the caller's end of a
// SOCK_SEQPACKET pair: one message per connection, payload = peer address,
// SCM_RIGHTS = connection fd.
type listener struct {
	ln   net.Listener
	pipe *net.UnixConn
	once sync.Once
}

func (l *listener) close() {
	l.once.Do(func() {
		l.ln.Close()
		l.pipe.Close()
	})
}

// acceptLoop takes every connection from the tsnet listener at once and
// hands it to the caller in a goroutine of its own. tsnet closes a
// connection that no Accept takes within one second, after the peer has
// already seen its handshake complete; a loop that waited for the caller
// between two Accepts lost connections that way under a burst. The hand-off
// itself has no deadline: a connection waits until the caller receives it
// (the caller decides, and records, whether to serve or refuse it), or is
// closed when the caller closes the listener.
func (l *listener) acceptLoop(n *node) {
	defer func() {
		l.close()
		n.mu.Lock()
		delete(n.listeners, l)
		n.mu.Unlock()
	}()
	for {
		tc, err := l.ln.Accept()
		if err != nil {
			n.srv.Logf("tsffi: listener %v closed: %v", l.ln.Addr(), err)
			return
		}
		go l.handOff(n, tc)
	}
}

// handOff sends one accepted connection to the caller and splices it.
func (l *listener) handOff(n *node, tc net.Conn) {
	uc, fd, err := socketpair(syscall.SOCK_STREAM)
	if err != nil {
		tc.Close()
		return
	}
	payload := []byte(tc.RemoteAddr().String())
	// Blocks while the caller's queue is full; messages are atomic on a
	// SOCK_SEQPACKET socket, so concurrent hand-offs do not interleave.
	_, _, err = l.pipe.WriteMsgUnix(payload, syscall.UnixRights(fd), nil)
	syscall.Close(fd) // the message holds its own reference now
	if err != nil {
		// The caller closed its end: the listener is gone.
		n.srv.Logf("tsffi: hand-off of %v failed: %v", tc.RemoteAddr(), err)
		tc.Close()
		uc.Close()
		l.close()
		return
	}
	splice(n, tc, uc)
}

// watchPeer closes l when the caller closes its end of the pair, so that
// dropping a listener in the caller releases the tailnet port.
func (l *listener) watchPeer() {
	buf := make([]byte, 1)
	for {
		if _, err := l.pipe.Read(buf); err != nil {
			l.close()
			return
		}
	}
}

//export tsffi_listen
func tsffi_listen(sd C.int, network, addr *C.char, listenerFd *C.int, errOut **C.char) C.int {
	n, err := lookup(sd)
	if err != nil {
		return fail(errOut, err)
	}
	if err := n.start(); err != nil {
		return fail(errOut, err)
	}
	ln, err := n.srv.Listen(C.GoString(network), C.GoString(addr))
	if err != nil {
		return fail(errOut, err)
	}
	pipe, fd, err := socketpair(syscall.SOCK_SEQPACKET)
	if err != nil {
		ln.Close()
		return fail(errOut, err)
	}
	l := &listener{ln: ln, pipe: pipe}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		l.close()
		syscall.Close(fd)
		return fail(errOut, errors.New("tsffi: node is closed"))
	}
	n.listeners[l] = struct{}{}
	n.mu.Unlock()
	go l.acceptLoop(n)
	go l.watchPeer()
	*listenerFd = C.int(fd)
	return 0
}

//export tsffi_accept
func tsffi_accept(listenerFd C.int, connFd *C.int, addrOut *C.char, addrLen C.size_t, errOut **C.char) C.int {
	buf := make([]byte, 256)
	oob := make([]byte, syscall.CmsgSpace(4))
	nb, noob, _, _, err := syscall.Recvmsg(int(listenerFd), buf, oob, syscall.MSG_CMSG_CLOEXEC)
	if err != nil {
		return fail(errOut, fmt.Errorf("tsffi: accept: %w", err))
	}
	if nb == 0 && noob == 0 {
		return fail(errOut, errors.New("tsffi: accept: listener closed"))
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:noob])
	if err != nil || len(msgs) != 1 {
		return fail(errOut, errors.New("tsffi: accept: message without a connection"))
	}
	fds, err := syscall.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return fail(errOut, errors.New("tsffi: accept: message without a connection"))
	}
	if int(addrLen) < nb+1 {
		syscall.Close(fds[0])
		return fail(errOut, errors.New("tsffi: accept: address buffer too small"))
	}
	out := unsafe.Slice((*byte)(unsafe.Pointer(addrOut)), int(addrLen))
	copy(out, buf[:nb])
	out[nb] = 0
	*connFd = C.int(fds[0])
	return 0
}

//export tsffi_dial
func tsffi_dial(sd C.int, network, addr *C.char, timeoutMs C.int, connFd *C.int, errOut **C.char) C.int {
	n, err := lookup(sd)
	if err != nil {
		return fail(errOut, err)
	}
	ctx, cancel := context.WithTimeout(n.upCtx, time.Duration(timeoutMs)*time.Millisecond)
	defer cancel()
	tc, err := n.srv.Dial(ctx, C.GoString(network), C.GoString(addr))
	if err != nil {
		return fail(errOut, fmt.Errorf("tsffi: dial %s: %w", C.GoString(addr), err))
	}
	uc, fd, err := socketpair(syscall.SOCK_STREAM)
	if err != nil {
		tc.Close()
		return fail(errOut, err)
	}
	go splice(n, tc, uc)
	*connFd = C.int(fd)
	return 0
}
