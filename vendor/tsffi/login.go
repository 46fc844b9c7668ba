package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"

	"tailscale.com/ipn"
)

// A node whose state dir already holds a login starts without its auth key.
//
// tsnet hands the auth key to every registration, also when the node key
// in the state dir is still valid, and a control server that stores keys
// hashed (headscale: bcrypt) then verifies the key on every restart: about
// 50 ms of control-server CPU per node, so a restart of 100 devices waited
// seconds on it. Tailscale's own client does the same for keys from system
// policy (LocalBackend.Start: "not setting opts.AuthKey from syspolicy;
// login profiles exist"). If the control server no longer knows the node
// (deleted, expired, an ephemeral node removed while offline), it asks for
// a login, and loginIfAsked answers with the key.

// holdKeyIfKnown moves the auth key out of srv if the state dir holds a
// login profile. Called with n.mu held, before srv.Start.
func (n *node) holdKeyIfKnown() {
	if n.srv.AuthKey == "" || !hasLogin(n.srv.Dir) {
		return
	}
	n.authKey = n.srv.AuthKey
	n.srv.AuthKey = ""
}

// hasLogin reports whether the tsnet state file in dir has a current
// login profile.
func hasLogin(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "tailscaled.state"))
	if err != nil {
		return false
	}
	var state map[string][]byte
	if json.Unmarshal(b, &state) != nil {
		return false
	}
	return len(state[string(ipn.CurrentProfileStateKey)]) > 0
}

// loginIfAsked watches the node until ctx ends; if the control server
// wants a login while a held-back auth key exists, it logs in with the key.
func (n *node) loginIfAsked(ctx context.Context) {
	n.mu.Lock()
	key := n.authKey
	n.mu.Unlock()
	if key == "" {
		return
	}
	lc, err := n.srv.LocalClient()
	if err != nil {
		return
	}
	w, err := lc.WatchIPNBus(ctx, ipn.NotifyInitialState)
	if err != nil {
		return
	}
	defer w.Close()
	for {
		note, err := w.Next()
		if err != nil {
			return
		}
		switch {
		case note.State != nil && *note.State == ipn.Running:
			return
		case note.State != nil && *note.State == ipn.NeedsLogin, note.BrowseToURL != nil:
			n.srv.Logf("tsffi: control server asks for a login; using the auth key")
			if err := lc.Start(ctx, ipn.Options{AuthKey: key}); err != nil {
				n.srv.Logf("tsffi: login with the auth key: %v", err)
				return
			}
			if err := lc.StartLoginInteractive(ctx); err != nil {
				n.srv.Logf("tsffi: login with the auth key: %v", err)
			}
			return
		}
	}
}
