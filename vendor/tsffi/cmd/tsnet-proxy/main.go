// Command tsnet-proxy is the benchmark peer for Portcullis' tcp device: one
// plain Go tsnet node that accepts TCP on a tailnet port and splices each
// connection to a fixed target with io.Copy in both directions. No identity
// checks, no audit: the floor a tcp device is compared with. It prints
// "serving" on stderr once the node is up and listening, then runs until
// killed.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"time"

	"tailscale.com/envknob"
	"tailscale.com/tsnet"
)

func main() {
	control := flag.String("control", "", "control URL")
	authKey := flag.String("authkey", "", "pre-auth key")
	dir := flag.String("dir", "", "state directory")
	name := flag.String("name", "go-proxy", "hostname on the tailnet")
	port := flag.Int("port", 7000, "tailnet port to listen on")
	target := flag.String("target", "", "host:port to forward to")
	flag.Parse()
	for _, kv := range [][2]string{{"TS_DEBUG_USE_DERP_HTTP", "1"}, {"TS_DEBUG_OMIT_LOCAL_ADDRS", "1"}, {"TS_DISABLE_PORTMAPPER", "1"}} {
		envknob.Setenv(kv[0], kv[1])
	}
	envknob.SetNoLogsNoSupport()
	s := &tsnet.Server{Dir: *dir, Hostname: *name, ControlURL: *control, AuthKey: *authKey, Logf: func(string, ...any) {}}
	s.UserLogf = s.Logf
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	if _, err := s.Up(ctx); err != nil {
		log.Fatalf("up: %v", err)
	}
	cancel()
	defer s.Close()
	ln, err := s.Listen("tcp", fmt.Sprintf(":%d", *port))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "serving %s:%d -> %s\n", *name, *port, *target)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go splice(c, *target)
	}
}

func splice(c net.Conn, target string) {
	defer c.Close()
	b, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		return
	}
	defer b.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(b, c)
		if t, ok := b.(*net.TCPConn); ok {
			t.CloseWrite()
		}
		close(done)
	}()
	io.Copy(c, b)
	if t, ok := c.(interface{ CloseWrite() error }); ok {
		t.CloseWrite()
	}
	<-done
}
