//! End-to-end smoke test of `portcullis run` on a local headscale: parallel
//! start, an allowed and a denied TCP connection, SIGTERM, audit verify.
//! A stopgap until the shared tailnet harness (`tests/common`) lands; run with
//! `PORTCULLIS_HEADSCALE=/path/to/headscale cargo test --test run_smoke -- --ignored`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::tailnet::NodeBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cli(bin: &str, cfg: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin)
        .arg("-c")
        .arg(cfg)
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn run_serves_devices_on_a_real_tailnet() {
    let hs_bin = std::env::var("PORTCULLIS_HEADSCALE").expect("PORTCULLIS_HEADSCALE");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let stun = free_port();
    let cfg = d.join("hs.yaml");
    std::fs::write(d.join("policy.hujson"), r#"{"tagOwners":{"tag:agent":["admin@"],"tag:portcullis":["admin@"]},"acls":[{"action":"accept","src":["*"],"dst":["*:*"]}]}"#).unwrap();
    std::fs::write(
        &cfg,
        format!(
            r#"server_url: http://127.0.0.1:{port}
listen_addr: 127.0.0.1:{port}
metrics_listen_addr: 127.0.0.1:{m}
grpc_listen_addr: 127.0.0.1:{g}
noise:
  private_key_path: {d}/noise.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: true
    region_id: 999
    region_code: "local"
    region_name: "local"
    verify_clients: true
    stun_listen_addr: "127.0.0.1:{stun}"
    private_key_path: {d}/derp.key
    automatically_add_embedded_derp_region: true
    ipv4: 127.0.0.1
  urls: []
  paths: []
  auto_update_enabled: false
disable_check_updates: true
database:
  type: sqlite
  sqlite:
    path: {d}/db.sqlite
log:
  level: warn
policy:
  mode: file
  path: {d}/policy.hujson
dns:
  magic_dns: true
  base_domain: tailnet.test
  override_local_dns: false
  nameservers:
    global: []
unix_socket: {d}/hs.sock
unix_socket_permission: "0770"
logtail:
  enabled: false
"#,
            m = free_port(),
            g = free_port(),
            d = d.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("hs.log")).unwrap();
    let hs = Command::new(&hs_bin)
        .arg("-c")
        .arg(&cfg)
        .arg("serve")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut hs = Kill(hs);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let admin = cli(&hs_bin, &cfg, &["users", "create", "admin"]);
    let alice = cli(&hs_bin, &cfg, &["users", "create", "alice"]);
    let id = |v: &serde_json::Value| {
        v["id"]
            .as_u64()
            .map(|n| n.to_string())
            .unwrap_or_else(|| v["id"].as_str().unwrap().to_string())
    };
    let dev_key = cli(
        &hs_bin,
        &cfg,
        &[
            "preauthkeys",
            "create",
            "--user",
            &id(&admin),
            "--reusable",
            "--tags",
            "tag:portcullis",
        ],
    )["key"]
        .as_str()
        .unwrap()
        .to_string();
    let alice_key = cli(
        &hs_bin,
        &cfg,
        &["preauthkeys", "create", "--user", &id(&alice), "--reusable"],
    )["key"]
        .as_str()
        .unwrap()
        .to_string();

    // Backends: TCP echo.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    let endpoints = d.join("endpoints.toml");
    std::fs::write(
        &endpoints,
        format!(
            r#"
[tailnet]
control_url = "http://127.0.0.1:{port}"
auth_key_env = "SMOKE_KEY"
state_dir = "{d}/state"

ephemeral = true

[[endpoint]]
name = "echo"
kind = "tcp"
target = "{echo_addr}"
ports = [7000]
allow = ["user:alice"]

[[endpoint]]
name = "closed"
kind = "tcp"
target = "{echo_addr}"
ports = [7001]
allow = ["user:nobody@example.com"]

[[endpoint]]
name = "web"
kind = "http"
target = "{echo_addr}"
ports = [80]
allow = ["user:alice"]
"#,
            d = d.display()
        ),
    )
    .unwrap();
    let began = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", endpoints.to_str().unwrap(), "--connector", "smoke"])
        .env("SMOKE_KEY", &dev_key)
        .env("PORTCULLIS_TS_KNOBS", "TS_DEBUG_USE_DERP_HTTP=1,TS_DEBUG_OMIT_LOCAL_ADDRS=1,TS_DISABLE_PORTMAPPER=1,TS_NO_LOGS_NO_SUPPORT=1")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn().unwrap();
    let mut run = Kill(run);
    let stderr = run.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("run| {line}");
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("run output");
        if line.starts_with("serving") {
            break;
        }
        assert!(!line.starts_with("error"), "{line}");
    }
    eprintln!("connector up after {:?}", began.elapsed());

    for (k, v) in [
        ("TS_DEBUG_USE_DERP_HTTP", "1"),
        ("TS_DEBUG_OMIT_LOCAL_ADDRS", "1"),
        ("TS_DISABLE_PORTMAPPER", "1"),
        ("TS_NO_LOGS_NO_SUPPORT", "1"),
    ] {
        portcullis::tailnet::set_knob(k, v).unwrap();
    }
    let client = NodeBuilder::new("laptop", d.join("client"))
        .control_url(format!("http://127.0.0.1:{port}"))
        .auth_key(alice_key)
        .start()
        .await
        .unwrap();
    let t = Instant::now();
    let mut conn = client
        .dial("echo:7000", Duration::from_secs(30))
        .await
        .expect("dial echo");
    conn.write_all(b"hello over the tailnet").await.unwrap();
    let mut got = [0u8; 22];
    conn.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello over the tailnet");
    eprintln!("first echo round trip {:?}", t.elapsed());
    let t = Instant::now();
    for _ in 0..100 {
        conn.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).await.unwrap();
    }
    eprintln!("100 1-byte round trips {:?}", t.elapsed());
    drop(conn);

    let mut denied = client
        .dial("closed:7001", Duration::from_secs(30))
        .await
        .expect("dial closed");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), denied.read_to_end(&mut rest))
        .await
        .expect("denied conn closes");
    assert!(rest.is_empty());

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        Command::new("kill")
            .args(["-TERM", &run.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let t = Instant::now();
    let status = run.0.wait().unwrap();
    eprintln!("stopped in {:?}: {status}", t.elapsed());
    assert!(status.success());
    client.close().await.unwrap();

    let db = d.join("state/audit.db");
    let report = portcullis::audit::verify(&format!("sqlite://{}", db.display()), None)
        .await
        .unwrap();
    assert!(report.ok);
    let records =
        portcullis::audit::query(&format!("sqlite://{}", db.display()), &Default::default())
            .await
            .unwrap();
    for r in &records {
        eprintln!(
            "{} {} {:?} {:?} {:?} up={:?} down={:?}",
            r.seq,
            r.record.kind,
            r.record.endpoint,
            r.record.decision,
            r.record.reason,
            r.record.bytes_up,
            r.record.bytes_down
        );
    }
    let kinds: Vec<_> = records.iter().map(|r| r.record.kind.as_str()).collect();
    assert!(
        kinds.contains(&"startup")
            && kinds.contains(&"connection_denied")
            && kinds.contains(&"connection_close")
    );
    assert_eq!(kinds.last(), Some(&"shutdown"));
    let _ = hs.0.kill();
}
