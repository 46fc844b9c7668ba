//go:build tools

// Package tools pins tailscaled and the tailscale CLI for `go build` in this module.
package tools

import (
	_ "tailscale.com/cmd/tailscale"
	_ "tailscale.com/cmd/tailscaled"
)
