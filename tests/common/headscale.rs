//! A real local tailnet: headscale on free 127.0.0.1 ports, with its embedded
//! DERP and STUN, a HuJSON policy, users and pre-auth keys made with its CLI.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::tools;

/// Knobs every tailnet client in the tests needs: plain-HTTP embedded DERP,
/// only loopback endpoints (no traffic to the host's other addresses), no
/// port mapping probes, no log upload.
pub const CLIENT_KNOBS: &[(&str, &str)] = &[
    ("TS_DEBUG_USE_DERP_HTTP", "1"),
    ("TS_DEBUG_OMIT_LOCAL_ADDRS", "1"),
    ("TS_DISABLE_PORTMAPPER", "1"),
    ("TS_NO_LOGS_NO_SUPPORT", "1"),
];

/// The capability name the tests' policy grants through headscale.
pub const APP_CAP: &str = "portcullis.test/cap/portcullis";

/// A default policy: everyone reaches everyone; tags owned by `admin`; an
/// app-capability grant from `tag:agent` to `tag:portcullis` devices.
pub fn default_policy() -> String {
    format!(
        r#"// test tailnet policy (HuJSON)
{{
  "tagOwners": {{
    "tag:agent": ["admin@"],
    "tag:intruder": ["admin@"],
    "tag:portcullis": ["admin@"],
    "tag:ops": ["admin@"],
  }},
  "acls": [
    {{"action": "accept", "src": ["*"], "dst": ["*:*"]}},
  ],
  "grants": [
    {{"src": ["tag:agent"], "dst": ["tag:portcullis"], "ip": ["*"],
      "app": {{"{APP_CAP}": [{{"endpoints": ["granted"], "tools": ["granted/*"]}}]}}}},
  ],
}}
"#
    )
}

/// A running headscale; stopped and cleaned up on drop.
pub struct Headscale {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// Control URL for clients.
    pub url: String,
}

/// Returns a port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}

impl Headscale {
    /// Starts headscale with [`default_policy`].
    pub fn start() -> Headscale {
        Self::start_with_policy(&default_policy())
    }

    /// Starts headscale with the given HuJSON policy.
    pub fn start_with_policy(policy: &str) -> Headscale {
        Self::start_on(free_port(), policy)
    }

    /// Starts headscale on a given 127.0.0.1 port.
    pub fn start_on(port: u16, policy: &str) -> Headscale {
        let bin = tools::headscale();
        let dir = tempfile::Builder::new()
            .prefix("portcullis-hs-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let url = format!("http://127.0.0.1:{port}");
        std::fs::write(d.join("policy.hujson"), policy).expect("write policy");
        let config = d.join("config.yaml");
        std::fs::write(&config, config_yaml(d, port)).expect("write config");
        let log = std::fs::File::create(d.join("headscale.log")).expect("log file");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("serve")
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn headscale");
        let hs = Headscale {
            child,
            dir,
            config,
            url,
        };
        hs.wait_healthy();
        hs
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = self.url.trim_start_matches("http://").to_string();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "headscale did not become healthy:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// headscale's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("headscale.log")).unwrap_or_default()
    }

    /// Runs the headscale CLI with JSON output.
    pub fn cli(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(tools::headscale())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .args(["-o", "json"])
            .output()
            .expect("run headscale cli");
        assert!(
            out.status.success(),
            "headscale {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "headscale {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Creates a user and returns its numeric ID.
    pub fn create_user(&self, name: &str) -> u64 {
        let v = self.cli(&["users", "create", name]);
        v["id"]
            .as_u64()
            .or_else(|| v["id"].as_str().and_then(|s| s.parse().ok()))
            .expect("user id")
    }

    /// Creates a reusable pre-auth key for `user`, optionally with tags.
    pub fn auth_key(&self, user: u64, tags: &[&str]) -> String {
        let uid = user.to_string();
        let mut args = vec![
            "preauthkeys",
            "create",
            "--user",
            &uid,
            "--reusable",
            "--expiration",
            "1h",
        ];
        let tag_list = tags.join(",");
        if !tags.is_empty() {
            args.extend(["--tags", &tag_list]);
        }
        let v = self.cli(&args);
        v["key"].as_str().expect("key field").to_string()
    }

    /// Directory for per-test state (removed with headscale).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Headscale {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// headscale's configuration for a loopback tailnet.
///
/// Two settings keep node start-up from measuring the test control server
/// rather than the node:
///
/// - `derp.server.ipv6: none`: with an IPv6 address on the host and a DERP
///   node that names no IPv6 address, a client's netcheck keeps an IPv6
///   probe open until its 3 s STUN timeout, and a node is not Running until
///   netcheck has picked a home DERP. A real deployment with several DERP
///   regions ends netcheck early; one embedded region does not.
/// - `tuning`: headscale batches node-store writes (500 ms) and map changes
///   (800 ms) by default, about 2 s on every registration.
fn config_yaml(d: &Path, port: u16) -> String {
    let stun = free_udp_port();
    let metrics = free_port();
    let grpc = free_port();
    let d = d.display();
    format!(
        r#"server_url: http://127.0.0.1:{port}
listen_addr: 127.0.0.1:{port}
metrics_listen_addr: 127.0.0.1:{metrics}
grpc_listen_addr: 127.0.0.1:{grpc}
grpc_allow_insecure: false
noise:
  private_key_path: {d}/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: true
    region_id: 999
    region_code: "local"
    region_name: "Local embedded DERP"
    verify_clients: true
    stun_listen_addr: "127.0.0.1:{stun}"
    private_key_path: {d}/derp_server_private.key
    automatically_add_embedded_derp_region: true
    ipv4: 127.0.0.1
    ipv6: none
  urls: []
  paths: []
  auto_update_enabled: false
  update_frequency: 24h
disable_check_updates: true
node:
  expiry: 0
  ephemeral:
    inactivity_timeout: 30m
database:
  type: sqlite
  sqlite:
    path: {d}/db.sqlite
    write_ahead_log: true
tls_cert_path: ""
tls_key_path: ""
log:
  level: warn
  format: text
policy:
  mode: file
  path: {d}/policy.hujson
dns:
  magic_dns: true
  base_domain: tailnet.test
  override_local_dns: false
  nameservers:
    global: []
    split: {{}}
  search_domains: []
  extra_records: []
unix_socket: {d}/headscale.sock
unix_socket_permission: "0770"
logtail:
  enabled: false
taildrop:
  enabled: false
tuning:
  node_store_batch_timeout: 10ms
  batch_change_delay: 50ms
"#
    )
}
