// Command tsnet-pair is the benchmark peer for the embedded node: two plain
// Go tsnet nodes in one process, measured the same way as two embedded
// nodes over the FFI path (bulk throughput, connect+echo latency). It
// prints one JSON object.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"sort"
	"time"

	"tailscale.com/envknob"
	"tailscale.com/tsnet"
)

func main() {
	control := flag.String("control", "", "control URL")
	authKey := flag.String("authkey", "", "pre-auth key")
	dir := flag.String("dir", "", "state root")
	bytesN := flag.Int64("bytes", 256<<20, "bytes to send for throughput")
	dials := flag.Int("dials", 200, "connect+echo round trips")
	flag.Parse()
	for _, kv := range [][2]string{{"TS_DEBUG_USE_DERP_HTTP", "1"}, {"TS_DEBUG_OMIT_LOCAL_ADDRS", "1"}, {"TS_DISABLE_PORTMAPPER", "1"}} {
		envknob.Setenv(kv[0], kv[1])
	}
	envknob.SetNoLogsNoSupport()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	mk := func(name string) *tsnet.Server {
		s := &tsnet.Server{Dir: filepath.Join(*dir, name), Hostname: name, ControlURL: *control, AuthKey: *authKey, Logf: func(string, ...any) {}}
		s.UserLogf = s.Logf
		if _, err := s.Up(ctx); err != nil {
			log.Fatalf("%s up: %v", name, err)
		}
		return s
	}
	a, b := mk("go-a"), mk("go-b")
	defer a.Close()
	defer b.Close()
	ip4, _ := a.TailscaleIPs()

	// Throughput: b sends, a counts; timed from first dial to a's EOF.
	ln, err := a.Listen("tcp", ":7001")
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan int64)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		done <- n
	}()
	addr := fmt.Sprintf("%s:7001", ip4)
	warm, err := b.Dial(ctx, "tcp", addr) // the first dial also sets up the path
	if err != nil {
		log.Fatal(err)
	}
	warm.Close()
	<-done
	go func() {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		done <- n
	}()
	start := time.Now()
	c, err := b.Dial(ctx, "tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for sent := int64(0); sent < *bytesN; sent += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			log.Fatal(err)
		}
	}
	c.Close()
	got := <-done
	secs := time.Since(start).Seconds()

	// Latency: dial, send one byte, read it back, close.
	echo, err := a.Listen("tcp", ":7002")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	eaddr := fmt.Sprintf("%s:7002", ip4)
	var lat []float64
	one := []byte{1}
	for i := 0; i < *dials; i++ {
		t := time.Now()
		c, err := b.Dial(ctx, "tcp", eaddr)
		if err != nil {
			log.Fatal(err)
		}
		c.Write(one)
		io.ReadFull(c, one)
		c.Close()
		lat = append(lat, float64(time.Since(t).Microseconds()))
	}
	sort.Float64s(lat)
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"bytes":       got,
		"mb_per_s":    float64(got) / secs / 1e6,
		"connect_p50": lat[len(lat)/2],
		"connect_p99": lat[len(lat)*99/100],
	})
}
