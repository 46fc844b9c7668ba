package main

/*
#include "tsffi.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"time"
)

// peer is one entry of tsffi_peers: who the node sees and how packets to
// it travel right now.
type peer struct {
	Name   string   `json:"name"`
	IPs    []string `json:"ips"`
	Tags   []string `json:"tags"`
	Online bool     `json:"online"`
	// Direct is the peer's UDP address when packets go straight to it.
	Direct string `json:"direct,omitempty"`
	// Relay is the DERP region code when they go through a relay.
	Relay   string `json:"relay,omitempty"`
	RxBytes int64  `json:"rx_bytes"`
	TxBytes int64  `json:"tx_bytes"`
}

//export tsffi_peers
func tsffi_peers(sd C.int, out **C.char, errOut **C.char) C.int {
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
	st, err := lc.Status(ctx)
	if err != nil {
		return fail(errOut, err)
	}
	peers := []peer{}
	for _, ps := range st.Peer {
		p := peer{
			Name:    ps.DNSName,
			IPs:     []string{},
			Tags:    []string{},
			Online:  ps.Online,
			Direct:  ps.CurAddr,
			RxBytes: ps.RxBytes,
			TxBytes: ps.TxBytes,
		}
		if ps.CurAddr == "" {
			p.Relay = ps.Relay
		}
		for _, ip := range ps.TailscaleIPs {
			p.IPs = append(p.IPs, ip.String())
		}
		if ps.Tags != nil {
			p.Tags = ps.Tags.AsSlice()
		}
		peers = append(peers, p)
	}
	b, err := json.Marshal(peers)
	if err != nil {
		return fail(errOut, err)
	}
	*out = C.CString(string(b))
	return 0
}
