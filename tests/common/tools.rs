//! Pinned Go tools (headscale, tailscaled, tailscale) built from the modules
//! under `tools/`, cached between runs.
//!
//! The cache key is a hash of the module's go.mod and go.sum, so changing a
//! pin rebuilds and nothing else does. Builds are serialized by a lock file
//! because several test binaries start at once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// Returns the path of `binary` (a command of Go module `tools/<module>`),
/// building it with `go build` on first use.
pub fn binary(module: &str, package: &str, binary: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools")
        .join(module);
    let mut hash = Sha256::new();
    for f in ["go.mod", "go.sum"] {
        let bytes = std::fs::read(root.join(f))
            .unwrap_or_else(|e| panic!("reading tools/{module}/{f}: {e}"));
        hash.update(&bytes);
    }
    let key = hex::encode(&hash.finalize()[..6]);
    let dir = cache_dir().join(format!("{module}-{key}"));
    let path = dir.join(binary);
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&dir).expect("creating tool cache dir");
    let lock = File::create(dir.join(".lock")).expect("creating tool lock");
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking tool dir");
    if path.exists() {
        return path;
    }
    let tmp = dir.join(format!(".{binary}.tmp"));
    eprintln!("building pinned {package} (first run only)...");
    let status = Command::new(std::env::var("GO").unwrap_or_else(|_| "go".into()))
        .current_dir(&root)
        .args(["build", "-trimpath", "-o"])
        .arg(&tmp)
        .arg(package)
        .status()
        .unwrap_or_else(|e| panic!("running go build for {package}: {e}"));
    assert!(status.success(), "go build {package} failed: {status}");
    std::fs::rename(&tmp, &path).expect("installing tool binary");
    path
}

fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PORTCULLIS_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())).join(".cache")
        });
    base.join("portcullis").join("tools")
}

/// headscale, the control server.
pub fn headscale() -> PathBuf {
    binary(
        "headscale",
        "github.com/juanfont/headscale/cmd/headscale",
        "headscale",
    )
}

/// tailscaled, the external peer's daemon.
pub fn tailscaled() -> PathBuf {
    binary("tailscale", "tailscale.com/cmd/tailscaled", "tailscaled")
}

/// The tailscale CLI for the external peer.
pub fn tailscale() -> PathBuf {
    binary("tailscale", "tailscale.com/cmd/tailscale", "tailscale")
}
