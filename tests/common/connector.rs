//! The `portcullis` binary as a user runs it: `portcullis run FILE`, on the
//! test tailnet, with its stderr kept for assertions.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::headscale::CLIENT_KNOBS;

/// A running connector process; killed on drop if still running.
pub struct Connector {
    child: Option<Child>,
    log: PathBuf,
    /// The audit store URL it writes to.
    pub audit_url: String,
}

/// The built binary.
pub fn binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_portcullis") {
        return PathBuf::from(path);
    }
    // Examples have no CARGO_BIN_EXE_*: the binary sits one level up
    // (target/<profile>/examples/demo -> target/<profile>/portcullis).
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("portcullis"))
        .expect("target dir")
}

impl Connector {
    /// Starts `portcullis run <config>` with the auth key in
    /// `PORTCULLIS_AUTH_KEY` and waits until it serves.
    pub fn start(config: &Path, auth_key: &str, audit_url: &str) -> Connector {
        Connector::start_named(config, auth_key, audit_url, "test-connector")
    }

    /// Like [`start`](Self::start), writing its audit chain as `name`; the
    /// output goes to `<config>.<name>.log` (appended, so a restart keeps
    /// the earlier run's output).
    pub fn start_named(config: &Path, auth_key: &str, audit_url: &str, name: &str) -> Connector {
        Connector::start_with(
            config,
            auth_key,
            audit_url,
            name,
            &["--watch-interval", "1"],
        )
    }

    /// Like [`start_named`](Self::start_named), with `args` instead of the
    /// default `--watch-interval 1`.
    pub fn start_with(
        config: &Path,
        auth_key: &str,
        audit_url: &str,
        name: &str,
        args: &[&str],
    ) -> Connector {
        let log = config.with_extension(format!("{name}.log"));
        // The log is appended to: an earlier run's lines are already there.
        let served = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("serving ")
            .count();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(binary())
            .arg("run")
            .arg(config)
            .arg("--audit")
            .arg(audit_url)
            .arg("--connector")
            .arg(name)
            .args(args)
            .env("PORTCULLIS_AUTH_KEY", auth_key)
            // The embedded Go runtime reads these at load.
            .envs(CLIENT_KNOBS.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn portcullis run");
        let mut c = Connector {
            child: Some(child),
            log,
            audit_url: audit_url.to_string(),
        };
        c.wait_for_count("serving ", served + 1, Duration::from_secs(120));
        c
    }

    /// Waits until the output contains `needle`; panics with the output if
    /// the process exits or the deadline passes.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        self.wait_for_count(needle, 1, timeout);
    }

    /// Waits until the output contains `needle` at least `count` times.
    pub fn wait_for_count(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().matches(needle).count() >= count {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "portcullis exited ({status}) before {needle:?}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Process ID of the running connector.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, sig).expect("kill");
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(Duration::from_secs(60))
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "portcullis did not exit:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Connector {
    /// Sends SIGTERM from a blocking task and returns the exit status and
    /// everything the process printed.
    pub async fn stopped(mut self) -> (std::process::ExitStatus, String) {
        tokio::task::spawn_blocking(move || (self.stop(), self.output()))
            .await
            .expect("stop")
    }
}

/// Runs `audit verify` on `audit_url` (plus `extra` arguments), asserts it
/// passes and returns what it printed.
pub fn assert_verifies(audit_url: &str, extra: &[&str]) -> String {
    let mut args = vec!["audit", "verify", "--audit", audit_url];
    args.extend_from_slice(extra);
    let out = run(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "audit verify {audit_url}: {text}");
    text
}

/// Every record in the store at `audit_url`, as JSON objects (the record
/// fields, plus `seq` and `connector`).
pub fn records(audit_url: &str) -> Vec<serde_json::Value> {
    let out = run(&[
        "audit", "query", "--audit", audit_url, "--json", "--limit", "10000000",
    ]);
    assert!(
        out.status.success(),
        "audit query: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            let mut record = v.get("record").cloned().unwrap_or_else(|| v.clone());
            for key in ["seq", "connector"] {
                if let Some(x) = v.get(key) {
                    record[key] = x.clone();
                }
            }
            record
        })
        .collect()
}

/// Runs the binary to completion (e.g. `audit verify`).
pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run portcullis")
}
