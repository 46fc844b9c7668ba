//! Builds `vendor/tsffi` (our C API over tailscale.com/tsnet) as a Go C
//! archive, links it, and generates Rust bindings from its header.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// tailscale.com in vendor/tsffi/go.mod needs at least this Go.
const MIN_GO: (u32, u32, u32) = (1, 26, 6);

/// tailscale.com features compiled out of the embedded nodes (`ts_omit_*`
/// build tags; `go run tailscale.com/cmd/featuretags --list` describes
/// them). A connector's nodes accept connections on the tailnet and do
/// nothing else, and every node in the process pays for each feature:
///
/// - `peerapiserver`: in userspace mode the PeerAPI opens a real TCP
///   listener on every host interface; without it the process listens on
///   no host interface at all.
/// - `logtail`: tsnet keeps a log buffer file per node and a goroutine
///   draining it even with upload disabled (about 5 % of idle CPU at 100
///   nodes). Logs still reach `tsffi_set_logfd`.
/// - `portlist`, `portmapper`, `netlog`, `c2n`, `captiveportal`,
///   `clientupdate`, `posture`, `relayserver`, `*metrics`, `syspolicy`:
///   per-node polling, probing or background work a connector never uses.
///   Without port mapping a node behind NAT still finds its public address
///   with STUN and falls back to DERP.
/// - the rest are OS integration (routers, DNS managers, D-Bus) that
///   userspace nodes do not touch, and client features (SSH, Taildrop,
///   exit nodes, subnet routes, web client) a connector does not offer.
///
/// Kept: netstack, gro, dns (MagicDNS names), ipnbus and health (up and its
/// errors), serve/acme (tsnet's API needs them), peerapiclient (tsdial's
/// Close panics without it), tailnetlock, cloud,
/// outboundproxy/useproxy (control behind an HTTP proxy), bakedroots,
/// cachenetmap. Together the omissions cut idle RSS by ~12 % and start-up
/// work per node; see docs/scale.md.
#[rustfmt::skip]
const TSNET_OMIT: &[&str] = &[
    "ace", "advertiseexitnode", "advertiseroutes", "appconnectors", "aws", "bird", "c2n",
    "captiveportal", "capture", "cliconndiag", "clientmetrics", "clientupdate", "colorable",
    "completion", "completion_scripts", "conn25", "dbus", "debug", "debugeventbus",
    "debugportmapper", "desktop_sessions", "doctor", "drive", "flashappliance", "hujsonconf",
    "identityfederation", "iptables", "kube", "linkspeed", "linuxdnsfight", "listenrawdisco",
    "logtail", "netlog", "networkmanager", "oauthkey", "osrouter",
    "peerapiserver", "portlist", "portmapper", "posture", "qrcodes", "relayserver",
    "remoteconfig", "resolved", "routecheck", "runtimemetrics", "sdnotify",
    "serviceclientprefs", "ssh", "synology", "syslog", "syspolicy", "systray", "taildrop", "tap",
    "tpm", "tundevstats", "unixsocketidentity", "useexitnode", "usermetrics", "useroutes",
    "wakeonlan", "webbrowser", "webclient",
];

fn main() {
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("vendor/tsffi");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    rerun_if_changed(&src);
    for knob in ["GO", "GOFLAGS", "GOPROXY", "GOCACHE", "GOMODCACHE", "CC"] {
        println!("cargo:rerun-if-env-changed={knob}");
    }

    let go = env::var("GO").unwrap_or_else(|_| "go".into());
    check_go_version(&go);

    let archive = out.join("libtsffi.a");
    let mut tags = vec!["netgo".to_owned(), "osusergo".to_owned()];
    tags.extend(TSNET_OMIT.iter().map(|f| format!("ts_omit_{f}")));
    let status = Command::new(&go)
        .current_dir(&src)
        .args(["build", "-buildmode=c-archive", "-trimpath", "-tags"])
        .arg(tags.join(","))
        .arg("-o")
        .arg(&archive)
        .arg(".")
        .env("CGO_ENABLED", "1")
        .status()
        .unwrap_or_else(|e| fail(&format!("could not run `{go} build`: {e}")));
    if !status.success() {
        fail(&format!(
            "`{go} build -buildmode=c-archive` in {} failed ({status})",
            src.display()
        ));
    }

    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=tsffi");
    println!("cargo:rustc-link-lib=dylib=pthread");
    println!("cargo:rustc-link-lib=dylib=dl");
    println!("cargo:rustc-link-lib=dylib=m");

    let bindings = bindgen::Builder::default()
        .header(src.join("tsffi.h").to_string_lossy())
        .allowlist_function("tsffi_.*")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| {
            fail(&format!(
                "bindgen over tsffi.h failed (is libclang installed?): {e}"
            ))
        });
    bindings
        .write_to_file(out.join("tsffi_bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("writing bindings: {e}")));
}

fn rerun_if_changed(src: &Path) {
    let entries =
        std::fs::read_dir(src).unwrap_or_else(|e| fail(&format!("reading {}: {e}", src.display())));
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".go") || name == "go.mod" || name == "go.sum" || name.ends_with(".h") {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    // New Go files appear as a directory change.
    println!("cargo:rerun-if-changed={}", src.display());
}

fn check_go_version(go: &str) {
    let output = Command::new(go).args(["env", "GOVERSION"]).output().unwrap_or_else(|e| {
        fail(&format!(
            "Go toolchain not found (`{go}`: {e}). Install Go >= {}.{}.{} or set GO=/path/to/go.",
            MIN_GO.0, MIN_GO.1, MIN_GO.2
        ))
    });
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().trim_start_matches("go");
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    if found < MIN_GO {
        fail(&format!(
            "Go {version} is too old: tailscale.com in vendor/tsffi needs Go >= {}.{}.{}",
            MIN_GO.0, MIN_GO.1, MIN_GO.2
        ));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    println!("cargo:warning={message}");
    std::process::exit(1);
}
