// Pins the tailscaled/tailscale peer used by tests as an external agent device.
module portcullis.local/tools/tailscale

go 1.26

require tailscale.com v1.104.5
