// Command tsffi is a C archive exposing tailscale.com/tsnet to the
// portcullis Rust crate. tsffi.h is the contract; this file implements it.
package main

/*
#include <stdlib.h>
#include "tsffi.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"
	"unsafe"

	"tailscale.com/envknob"
	"tailscale.com/logtail"
	"tailscale.com/tsnet"
)

func main() {}

func init() {
	// Nothing in an embedded connector may upload logs anywhere.
	logtail.Disable()
	envknob.SetNoLogsNoSupport()
}

// node is one tsnet server plus what the C API needs around it.
type node struct {
	mu        sync.Mutex
	srv       *tsnet.Server
	started   bool
	closed    bool
	upCtx     context.Context // cancelled by close, so a waiting up returns
	upCancel  context.CancelFunc
	logFile   *os.File
	listeners map[*listener]struct{}
	// conns are the tailnet connections being spliced, closed first by
	// tsffi_close (see there).
	conns map[net.Conn]struct{}
	// authKey is kept here rather than in srv when the state dir already
	// holds a login: it is used only if the control server asks for one.
	authKey string
}

// track registers a spliced connection; false if the node is closing.
func (n *node) track(tc net.Conn) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	if n.conns == nil {
		n.conns = map[net.Conn]struct{}{}
	}
	n.conns[tc] = struct{}{}
	return true
}

func (n *node) untrack(tc net.Conn) {
	n.mu.Lock()
	delete(n.conns, tc)
	n.mu.Unlock()
}

var (
	nodesMu sync.Mutex
	nodes         = map[C.int]*node{}
	nextID  C.int = 1
)

func lookup(sd C.int) (*node, error) {
	nodesMu.Lock()
	defer nodesMu.Unlock()
	n, ok := nodes[sd]
	if !ok {
		return nil, fmt.Errorf("tsffi: no node with handle %d", int(sd))
	}
	return n, nil
}

// fail stores msg in *err (if err is non-nil) and returns -1.
func fail(errOut **C.char, err error) C.int {
	if errOut != nil {
		*errOut = C.CString(err.Error())
	}
	return -1
}

//export tsffi_free
func tsffi_free(p *C.char) { C.free(unsafe.Pointer(p)) }

//export tsffi_setenv
func tsffi_setenv(key, value *C.char, errOut **C.char) C.int {
	k := C.GoString(key)
	if !strings.HasPrefix(k, "TS_") {
		return fail(errOut, fmt.Errorf("tsffi: refusing to set %q: only TS_* knobs", k))
	}
	envknob.Setenv(k, C.GoString(value))
	return 0
}

//export tsffi_version
func tsffi_version() *C.char {
	v := map[string]string{"go": runtime.Version(), "tailscale": "unknown"}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Path == "tailscale.com" {
				v["tailscale"] = dep.Version
			}
		}
	}
	b, _ := json.Marshal(v)
	return C.CString(string(b))
}

//export tsffi_stacks
func tsffi_stacks() *C.char {
	buf := make([]byte, 4<<20)
	n := runtime.Stack(buf, true)
	return C.CString(string(buf[:n]))
}

//export tsffi_new
func tsffi_new() C.int {
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{
		srv:       &tsnet.Server{},
		upCtx:     ctx,
		upCancel:  cancel,
		listeners: map[*listener]struct{}{},
	}
	// Until told otherwise, logs go nowhere (tsnet's default is stderr).
	n.srv.Logf = func(string, ...any) {}
	n.srv.UserLogf = n.srv.Logf
	nodesMu.Lock()
	defer nodesMu.Unlock()
	id := nextID
	nextID++
	nodes[id] = n
	return id
}

// configure runs f on a node that has not started yet.
func configure(sd C.int, errOut **C.char, f func(n *node) error) C.int {
	n, err := lookup(sd)
	if err != nil {
		return fail(errOut, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started || n.closed {
		return fail(errOut, errors.New("tsffi: node already started; configure it before start"))
	}
	if err := f(n); err != nil {
		return fail(errOut, err)
	}
	return 0
}

//export tsffi_set_dir
func tsffi_set_dir(sd C.int, dir *C.char, errOut **C.char) C.int {
	return configure(sd, errOut, func(n *node) error { n.srv.Dir = C.GoString(dir); return nil })
}

//export tsffi_set_hostname
func tsffi_set_hostname(sd C.int, hostname *C.char, errOut **C.char) C.int {
	return configure(sd, errOut, func(n *node) error { n.srv.Hostname = C.GoString(hostname); return nil })
}

//export tsffi_set_authkey
func tsffi_set_authkey(sd C.int, key *C.char, errOut **C.char) C.int {
	return configure(sd, errOut, func(n *node) error { n.srv.AuthKey = C.GoString(key); return nil })
}

//export tsffi_set_control_url
func tsffi_set_control_url(sd C.int, url *C.char, errOut **C.char) C.int {
	return configure(sd, errOut, func(n *node) error { n.srv.ControlURL = C.GoString(url); return nil })
}

//export tsffi_set_ephemeral
func tsffi_set_ephemeral(sd C.int, ephemeral C.int, errOut **C.char) C.int {
	return configure(sd, errOut, func(n *node) error { n.srv.Ephemeral = ephemeral != 0; return nil })
}

//export tsffi_set_tags
func tsffi_set_tags(sd C.int, tags *C.char, errOut **C.char) C.int {
	return configure(sd, errOut, func(n *node) error {
		n.srv.AdvertiseTags = nil
		for _, t := range strings.Split(C.GoString(tags), ",") {
			if t = strings.TrimSpace(t); t == "" {
				continue
			}
			if !strings.HasPrefix(t, "tag:") {
				return fmt.Errorf("tsffi: tag %q must start with \"tag:\"", t)
			}
			n.srv.AdvertiseTags = append(n.srv.AdvertiseTags, t)
		}
		return nil
	})
}

//export tsffi_set_logfd
func tsffi_set_logfd(sd C.int, fd C.int, errOut **C.char) C.int {
	return configure(sd, errOut, func(n *node) error {
		if n.logFile != nil {
			n.logFile.Close()
			n.logFile = nil
		}
		if fd < 0 {
			n.srv.Logf = func(string, ...any) {}
			n.srv.UserLogf = n.srv.Logf
			return nil
		}
		f := os.NewFile(uintptr(fd), "tsffi-log")
		if f == nil {
			return fmt.Errorf("tsffi: invalid log fd %d", int(fd))
		}
		n.logFile = f
		var wmu sync.Mutex
		logf := func(format string, args ...any) {
			line := fmt.Sprintf(format, args...)
			if !strings.HasSuffix(line, "\n") {
				line += "\n"
			}
			wmu.Lock()
			defer wmu.Unlock()
			f.WriteString(line) // a reader that went away only loses logs
		}
		n.srv.Logf = logf
		n.srv.UserLogf = logf
		return nil
	})
}

// start starts n's backend once. Callers hold no locks.
func (n *node) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errors.New("tsffi: node is closed")
	}
	if n.srv.Dir == "" {
		return errors.New("tsffi: state dir not set; every node needs its own")
	}
	if n.started {
		return nil
	}
	n.holdKeyIfKnown()
	if err := n.srv.Start(); err != nil {
		return err
	}
	n.started = true
	return nil
}

//export tsffi_start
func tsffi_start(sd C.int, errOut **C.char) C.int {
	n, err := lookup(sd)
	if err != nil {
		return fail(errOut, err)
	}
	if err := n.start(); err != nil {
		return fail(errOut, err)
	}
	return 0
}

//export tsffi_up
func tsffi_up(sd C.int, timeoutMs C.int, errOut **C.char) C.int {
	n, err := lookup(sd)
	if err != nil {
		return fail(errOut, err)
	}
	if err := n.start(); err != nil {
		return fail(errOut, err)
	}
	timeout := time.Duration(timeoutMs) * time.Millisecond
	ctx, cancel := context.WithTimeout(n.upCtx, timeout)
	defer cancel()
	go n.loginIfAsked(ctx)
	if _, err := n.srv.Up(ctx); err != nil {
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			return fail(errOut, fmt.Errorf("tsffi: not running on the tailnet after %v%s", timeout, n.stateHint()))
		case n.upCtx.Err() != nil:
			return fail(errOut, errors.New("tsffi: up cancelled: node closed"))
		}
		return fail(errOut, err)
	}
	return 0
}

// stateHint describes why a node is not up yet, for timeout errors.
func (n *node) stateHint() string {
	lc, err := n.srv.LocalClient()
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil {
		return ""
	}
	hint := fmt.Sprintf(" (state %s", st.BackendState)
	if len(st.Health) > 0 {
		hint += "; " + strings.Join(st.Health, "; ")
	}
	return hint + ")"
}

const (
	// closeSettle lets the packets of just-closed connections leave.
	closeSettle = 200 * time.Millisecond
	// closeTimeout bounds tsffi_close: a node that cannot finish closing
	// must not stop the process from exiting.
	closeTimeout = 15 * time.Second
)

//export tsffi_close
func tsffi_close(sd C.int, errOut **C.char) C.int {
	nodesMu.Lock()
	n, ok := nodes[sd]
	delete(nodes, sd)
	nodesMu.Unlock()
	if !ok {
		return fail(errOut, fmt.Errorf("tsffi: no node with handle %d", int(sd)))
	}
	n.upCancel()
	n.mu.Lock()
	n.closed = true
	started := n.started
	lns := n.listeners
	n.listeners = nil
	conns := n.conns
	n.conns = nil
	n.mu.Unlock()
	for l := range lns {
		l.close()
	}
	// Close spliced connections while the netstack still sends packets.
	// tsnet's Close stops the netstack's outbound pump before aborting the
	// connections left open, and an abort's RST then blocks forever if the
	// outbound queue is full; closing them first (and letting the queue
	// drain) avoids that.
	for tc := range conns {
		tc.Close()
	}
	if len(conns) > 0 {
		time.Sleep(closeSettle)
	}
	var err error
	if started {
		done := make(chan error, 1)
		go func() { done <- n.srv.Close() }()
		select {
		case err = <-done:
		case <-time.After(closeTimeout):
			err = fmt.Errorf("tsffi: tsnet close did not finish within %v; its goroutines are left behind", closeTimeout)
		}
	}
	if n.logFile != nil {
		n.logFile.Close()
	}
	if err != nil {
		return fail(errOut, err)
	}
	return 0
}

//export tsffi_getips
func tsffi_getips(sd C.int, out **C.char, errOut **C.char) C.int {
	n, err := lookup(sd)
	if err != nil {
		return fail(errOut, err)
	}
	ip4, ip6 := n.srv.TailscaleIPs()
	var ips []string
	if ip4.IsValid() {
		ips = append(ips, ip4.String())
	}
	if ip6.IsValid() {
		ips = append(ips, ip6.String())
	}
	if len(ips) == 0 {
		return fail(errOut, errors.New("tsffi: node has no tailnet address yet"))
	}
	*out = C.CString(strings.Join(ips, ","))
	return 0
}

//export tsffi_whois
func tsffi_whois(sd C.int, addr *C.char, out **C.char, errOut **C.char) C.int {
	n, err := lookup(sd)
	if err != nil {
		return fail(errOut, err)
	}
	lc, err := n.srv.LocalClient()
	if err != nil {
		return fail(errOut, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	who, err := lc.WhoIs(ctx, C.GoString(addr))
	if err != nil {
		return fail(errOut, fmt.Errorf("tsffi: whois %s: %w", C.GoString(addr), err))
	}
	b, err := json.Marshal(who)
	if err != nil {
		return fail(errOut, err)
	}
	*out = C.CString(string(b))
	return 0
}
