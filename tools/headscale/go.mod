// Pins the headscale control server used by the local test tailnet and the demo.
module portcullis.local/tools/headscale

go 1.26

require github.com/juanfont/headscale v0.29.3
