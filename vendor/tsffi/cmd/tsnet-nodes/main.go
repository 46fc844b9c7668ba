// Command tsnet-nodes starts N plain tsnet nodes in one process and reports,
// as one JSON line on stdout, how long they took to join and what the
// process costs once idle. Portcullis' scale benchmark uses it to register
// extra peers in a tailnet, and it is the plain-Go baseline for measuring a
// node's cost: -cpuprofile and -pprof show where it goes. With -hold it
// keeps the nodes up until killed.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	_ "net/http/pprof"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"tailscale.com/envknob"
	"tailscale.com/tsnet"
)

func main() {
	control := flag.String("control", "", "control URL")
	authKey := flag.String("authkey", "", "pre-auth key")
	dir := flag.String("dir", "", "root of the nodes' state directories")
	n := flag.Int("n", 1, "nodes")
	par := flag.Int("par", 0, "most nodes joining at once (0: all)")
	idle := flag.Duration("idle", 15*time.Second, "idle time to measure CPU over")
	settle := flag.Duration("settle", 5*time.Second, "time to let the nodes settle first")
	logNode := flag.Int("log", -1, "index of a node whose logs go to stderr")
	pprofAddr := flag.String("pprof", "", "serve net/http/pprof on this loopback address")
	prefix := flag.String("prefix", "node", "hostname prefix")
	knobs := flag.String("knobs", "", "extra TS_ knobs, K=V,K=V")
	cpuProf := flag.String("cpuprofile", "", "write a CPU profile of the start-up here")
	noWarmKey := flag.Bool("nowarmkey", false, "omit the auth key for nodes whose state dir exists")
	hold := flag.Bool("hold", false, "keep the nodes up after reporting, until killed")
	flag.Parse()
	for _, kv := range [][2]string{{"TS_DEBUG_USE_DERP_HTTP", "1"}, {"TS_DEBUG_OMIT_LOCAL_ADDRS", "1"}, {"TS_DISABLE_PORTMAPPER", "1"}} {
		envknob.Setenv(kv[0], kv[1])
	}
	for _, kv := range strings.Split(*knobs, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			envknob.Setenv(k, v)
		}
	}
	envknob.SetNoLogsNoSupport()
	if *pprofAddr != "" {
		go http.ListenAndServe(*pprofAddr, nil)
	}
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(f)
	}
	t0 := time.Now()
	ups := make([]time.Duration, *n)
	limit := *par
	if limit <= 0 {
		limit = *n
	}
	slots := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range *n {
		s := &tsnet.Server{
			Dir:        filepath.Join(*dir, strconv.Itoa(i)),
			Hostname:   fmt.Sprintf("%s-%d", *prefix, i),
			ControlURL: *control,
			AuthKey:    *authKey,
		}
		if _, err := os.Stat(filepath.Join(s.Dir, "tailscaled.state")); err == nil && *noWarmKey {
			s.AuthKey = ""
		}
		s.Logf = func(string, ...any) {}
		if i == *logNode {
			start := time.Now()
			s.Logf = func(f string, a ...any) {
				fmt.Fprintf(os.Stderr, "%7.3f "+f+"\n", append([]any{time.Since(start).Seconds()}, a...)...)
			}
		}
		s.UserLogf = s.Logf
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			began := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			if _, err := s.Up(ctx); err != nil {
				log.Fatalf("node %d: up: %v", i, err)
			}
			ups[i] = time.Since(began)
		})
	}
	wg.Wait()
	all := time.Since(t0)
	if *cpuProf != "" {
		pprof.StopCPUProfile()
	}
	startCPU := cpuTicks()
	var slowest, sum time.Duration
	for _, u := range ups {
		sum += u
		slowest = max(slowest, u)
	}
	time.Sleep(*settle)
	c0, w0 := cpuTicks(), time.Now()
	time.Sleep(*idle)
	cpuPct := float64(cpuTicks()-c0) / 100 / time.Since(w0).Seconds() * 100
	fmt.Printf("{\"n\":%d,\"all_up_s\":%.2f,\"mean_up_s\":%.2f,\"max_up_s\":%.2f,\"start_cpu_s\":%.2f,\"rss_mb\":%.1f,\"cpu_pct\":%.2f}\n",
		*n, all.Seconds(), sum.Seconds()/float64(*n), slowest.Seconds(), float64(startCPU)/100, rssMB(), cpuPct)
	if *hold {
		select {}
	}
}

func rssMB() float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

// cpuTicks is utime+stime of this process in clock ticks (100 Hz).
func cpuTicks() int64 {
	b, _ := os.ReadFile("/proc/self/stat")
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+1:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return u + k
}
