package main

/*
#include "tsffi.h"
*/
import "C"

import (
	"encoding/json"
	"errors"
	"math"
	"runtime"
	"runtime/debug"
)

//export tsffi_set_gc
func tsffi_set_gc(gcPercent C.int, memoryLimit C.longlong, errOut **C.char) C.int {
	if gcPercent < -1 || memoryLimit < 0 {
		return fail(errOut, errors.New("tsffi: gc percent must be -1 (off), 0 (unchanged) or positive; memory limit 0 (unchanged) or positive"))
	}
	if gcPercent != 0 {
		debug.SetGCPercent(int(gcPercent))
	}
	if memoryLimit > 0 {
		debug.SetMemoryLimit(int64(memoryLimit))
	}
	return 0
}

// memStats is what tsffi_memstats reports: the Go heap as the Go runtime
// sees it, which counts allocated buffers whether or not they are resident.
type memStats struct {
	HeapAlloc   uint64 `json:"heap_alloc"`
	HeapInuse   uint64 `json:"heap_inuse"`
	HeapSys     uint64 `json:"heap_sys"`
	NextGC      uint64 `json:"next_gc"`
	StackInuse  uint64 `json:"stack_inuse"`
	NumGC       uint32 `json:"num_gc"`
	Goroutines  int    `json:"goroutines"`
	GCPercent   int    `json:"gc_percent"`
	MemoryLimit int64  `json:"memory_limit"`
}

//export tsffi_memstats
func tsffi_memstats() *C.char {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	// Reading the settings means setting them; put them straight back.
	gc := debug.SetGCPercent(100)
	debug.SetGCPercent(gc)
	limit := debug.SetMemoryLimit(-1)
	if limit == math.MaxInt64 {
		limit = 0
	}
	b, _ := json.Marshal(memStats{
		HeapAlloc:   m.HeapAlloc,
		HeapInuse:   m.HeapInuse,
		HeapSys:     m.HeapSys,
		NextGC:      m.NextGC,
		StackInuse:  m.StackInuse,
		NumGC:       m.NumGC,
		Goroutines:  runtime.NumGoroutine(),
		GCPercent:   gc,
		MemoryLimit: limit,
	})
	return C.CString(string(b))
}
