//go:build tools

// Package tools pins the headscale command for `go build` in this module.
package tools

import _ "github.com/juanfont/headscale/cmd/headscale"
