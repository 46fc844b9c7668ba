//! Scale benchmark: what `portcullis run` costs with 1 to 100 tcp devices,
//! next to the same number of plain Go tsnet nodes run as separate
//! processes (`vendor/tsffi/cmd/tsnet-proxy`, one per device).
//!
//! For each tailnet policy, on a fresh local headscale:
//!
//! - `agents`: the recommended policy (`examples/tailnet-policy.hujson`):
//!   `tag:agent` reaches `tag:portcullis`; devices do not see each other.
//!   One agent node is registered (the bench's own client), so each device
//!   has one peer.
//! - `mesh`: everyone reaches everyone. The devices of earlier rounds stay
//!   registered (offline), so at 100 devices the tailnet holds ~200 nodes.
//!
//! and for each device count N: cold start (fresh state, time from spawn to
//! "serving"), idle RSS and CPU after the devices settled, warm restart
//! (same state), and the Go peers' cold start, RSS per process and total
//! idle CPU. It also prints how the agent's packets reach a device: directly
//! over loopback UDP or through headscale's embedded DERP relay.
//!
//! Run: `cargo bench --bench scale` (prints a table; figures, not asserts).
//! `SCALE_N=1,10,30` picks the device counts, `SCALE_POLICIES=agents` the
//! policies, `SCALE_EXTRA_PEERS=100` registers that many more agent nodes
//! (one Go process) before measuring, `SCALE_GO=0` skips the Go peers.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::connector::Connector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Time for the devices to settle (first map, netcheck) before measuring.
const SETTLE: Duration = Duration::from_secs(10);
/// Idle window over which CPU is measured.
const IDLE: Duration = Duration::from_secs(15);

const AGENTS_POLICY: &str = include_str!("../examples/tailnet-policy.hujson");
const MESH_POLICY: &str = r#"{
  "tagOwners": {"tag:agent": ["admin@"], "tag:portcullis": ["admin@"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}"#;

/// One row of the table.
#[derive(Default, Clone)]
struct Row {
    n: usize,
    cold_s: f64,
    warm_s: f64,
    rss_mb: f64,
    cpu_pct: f64,
    go_cold_s: Option<f64>,
    go_rss_per_process: Option<f64>,
    go_cpu_pct: Option<f64>,
}

fn main() {
    let counts = list("SCALE_N", "1,10,30,60,100")
        .iter()
        .map(|s| s.parse::<usize>().expect("SCALE_N: numbers"))
        .collect::<Vec<_>>();
    let policies = list("SCALE_POLICIES", "agents,mesh");
    let extra: usize = std::env::var("SCALE_EXTRA_PEERS")
        .ok()
        .map_or(0, |v| v.parse().expect("SCALE_EXTRA_PEERS: a number"));
    let with_go = std::env::var("SCALE_GO").map_or(true, |v| v != "0");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bins = build_go_tools();
    let echo = rt.block_on(common::net::tcp_echo_backend());

    let mut tables = Vec::new();
    for policy in &policies {
        let text = match policy.as_str() {
            "agents" => AGENTS_POLICY,
            "mesh" => MESH_POLICY,
            other => panic!("SCALE_POLICIES: unknown policy {other:?} (agents, mesh)"),
        };
        let hs = common::Headscale::start_with_policy(text);
        let admin = hs.create_user("admin");
        let device_key = hs.auth_key(admin, &["tag:portcullis"]);
        let agent_key = hs.auth_key(admin, &["tag:agent"]);
        let agent = rt.block_on(common::node(&hs, "agent", &agent_key));
        let _extra = (extra > 0).then(|| extra_peers(&bins.nodes, &hs, &agent_key, extra));
        let mut rows = Vec::new();
        let mut path = String::from("n/a");
        for &n in &counts {
            let dir = hs.dir().join(format!("n{n}"));
            let config = write_config(&hs, &dir, n, echo);
            let mut row = Row {
                n,
                ..Row::default()
            };
            let (connector, cold) = timed_start(&config, &device_key, &dir);
            row.cold_s = cold;
            if path == "n/a" {
                path = rt.block_on(path_to(&agent, &format!("n{n}-dev-0")));
            }
            std::thread::sleep(SETTLE);
            (row.rss_mb, row.cpu_pct) = idle_cost(&[connector.pid()]);
            stop(connector);
            let (connector, warm) = timed_start(&config, &device_key, &dir);
            row.warm_s = warm;
            stop(connector);
            if with_go {
                let go = GoPeers::start(&bins.proxy, &hs, &device_key, &dir, n, echo);
                row.go_cold_s = Some(go.cold_s);
                std::thread::sleep(SETTLE);
                let (rss, cpu) = idle_cost(&go.pids());
                row.go_rss_per_process = Some(rss / n as f64);
                row.go_cpu_pct = Some(cpu);
            }
            eprintln!("measured {policy} x{n}");
            rows.push(row);
        }
        rt.block_on(async {
            let _ = agent.close().await;
        });
        tables.push((policy.clone(), path, rows));
    }
    report(&tables, extra);
}

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn report(tables: &[(String, String, Vec<Row>)], extra: usize) {
    println!("\n== scale: `portcullis run` with N tcp devices vs N plain Go tsnet processes ==");
    println!(
        "local headscale on loopback; idle: {SETTLE:?} settle, then CPU over {IDLE:?}; \
         extra registered agent peers: {extra}"
    );
    for (policy, path, rows) in tables {
        println!("\n-- policy: {policy} (agent -> device path: {path}) --");
        println!(
            "{:>4} {:>8} {:>8} {:>9} {:>10} {:>8} | {:>8} {:>11} {:>8}",
            "N",
            "cold s",
            "warm s",
            "RSS MB",
            "MB/device",
            "CPU %",
            "Go cold",
            "Go MB/proc",
            "Go CPU%"
        );
        let first = rows.iter().find(|r| r.n == 1).or(rows.first());
        for r in rows {
            let marginal = match first {
                Some(f) if r.n > f.n => {
                    format!("{:.2}", (r.rss_mb - f.rss_mb) / (r.n - f.n) as f64)
                }
                _ => "-".to_owned(),
            };
            let opt = |v: Option<f64>, p: usize| {
                v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.p$}"))
            };
            println!(
                "{:>4} {:>8.2} {:>8.2} {:>9.1} {:>10} {:>8.2} | {:>8} {:>11} {:>8}",
                r.n,
                r.cold_s,
                r.warm_s,
                r.rss_mb,
                marginal,
                r.cpu_pct,
                opt(r.go_cold_s, 2),
                opt(r.go_rss_per_process, 1),
                opt(r.go_cpu_pct, 2),
            );
        }
        if let (Some(f), Some(l)) = (first, rows.iter().max_by_key(|r| r.n)) {
            if l.n > f.n {
                let per = (l.rss_mb - f.rss_mb) / (l.n - f.n) as f64;
                let go = l
                    .go_rss_per_process
                    .map_or_else(|| "n/a".to_owned(), |g| format!("{:.2}x", per / g));
                println!(
                    "at {} devices: {per:.2} MB per device ({}; goal <= 2), idle CPU {:.2} % ({}; goal < 2), \
                     cold {:.1} s ({}; goal < 10), warm {:.1} s ({}; goal < 3); per device vs a Go process: {go}",
                    l.n,
                    met(per <= 2.0),
                    l.cpu_pct,
                    met(l.cpu_pct < 2.0),
                    l.cold_s,
                    met(l.cold_s < 10.0),
                    l.warm_s,
                    met(l.warm_s < 3.0),
                );
            }
            println!(
                "1 device: cold {:.2} s ({}; goal < 1.5)",
                f.cold_s,
                met(f.cold_s < 1.5)
            );
        }
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

/// `<dir>/endpoints.toml` with `n` tcp devices named `n<n>-dev-<i>`, all
/// pointing at the echo backend.
fn write_config(hs: &common::Headscale, dir: &Path, n: usize, echo: u16) -> PathBuf {
    std::fs::create_dir_all(dir).expect("config dir");
    let mut text = format!(
        "[tailnet]\ncontrol_url = \"{}\"\nauth_key_env = \"PORTCULLIS_AUTH_KEY\"\nstate_dir = \"{}\"\n",
        hs.url,
        dir.join("state").display()
    );
    for i in 0..n {
        text.push_str(&format!(
            "\n[[endpoint]]\nname = \"n{n}-dev-{i}\"\nkind = \"tcp\"\ntarget = \"127.0.0.1:{echo}\"\n\
             ports = [7000]\nallow = [\"tag:agent\"]\n"
        ));
    }
    let file = dir.join("endpoints.toml");
    std::fs::write(&file, text).expect("write config");
    file
}

/// Starts `portcullis run` and returns it with the seconds until it served.
fn timed_start(config: &Path, key: &str, dir: &Path) -> (Connector, f64) {
    let audit = format!("sqlite://{}", dir.join("audit.db").display());
    let began = Instant::now();
    let connector = Connector::start_with(config, key, &audit, "scale", &["--watch-interval", "0"]);
    (connector, began.elapsed().as_secs_f64())
}

fn stop(mut connector: Connector) {
    let status = connector.stop();
    assert!(
        status.success(),
        "portcullis exited {status}:\n{}",
        connector.output()
    );
}

/// How the agent's packets reach `device`: direct UDP or a DERP relay.
async fn path_to(agent: &portcullis::tailnet::Node, device: &str) -> String {
    // Traffic first: a path is chosen once packets flow.
    let addr = format!("{device}:7000");
    if let Ok(mut c) = agent.dial(&addr, Duration::from_secs(30)).await {
        let _ = c.write_all(b"ping").await;
        let mut buf = [0u8; 4];
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut buf)).await;
    }
    for _ in 0..20 {
        let peers = agent.peers().await.unwrap_or_default();
        if let Some(p) = peers
            .iter()
            .find(|p| p.name.starts_with(&format!("{device}.")))
        {
            if let Some(direct) = &p.direct {
                return format!("direct UDP to {direct}");
            }
            if let Some(relay) = &p.relay {
                return format!("DERP relay {relay} (no direct path yet)");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    "unknown (device not in the agent's peers)".to_owned()
}

/// Sum of RSS (MB) of `pids` now, and their CPU (% of one core) over IDLE.
fn idle_cost(pids: &[u32]) -> (f64, f64) {
    let ticks = |pids: &[u32]| pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let (c0, t0) = (ticks(pids), Instant::now());
    std::thread::sleep(IDLE);
    let cpu = (ticks(pids) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
    (pids.iter().map(|&p| rss_mb(p)).sum(), cpu)
}

/// N tsnet-proxy processes, one per device, killed on drop.
struct GoPeers {
    children: Vec<Child>,
    cold_s: f64,
}

impl GoPeers {
    fn start(
        bin: &Path,
        hs: &common::Headscale,
        key: &str,
        dir: &Path,
        n: usize,
        echo: u16,
    ) -> GoPeers {
        let began = Instant::now();
        let logs: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("go-{i}.log"))).collect();
        let children = logs
            .iter()
            .enumerate()
            .map(|(i, log)| {
                let out = std::fs::File::create(log).expect("log");
                Command::new(bin)
                    .arg(format!("-control={}", hs.url))
                    .arg(format!("-authkey={key}"))
                    .arg(format!("-dir={}", dir.join(format!("go-{i}")).display()))
                    .arg(format!("-name=go-n{n}-{i}"))
                    .arg("-port=7000")
                    .arg(format!("-target=127.0.0.1:{echo}"))
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().expect("dup"))
                    .stderr(out)
                    .spawn()
                    .expect("spawn tsnet-proxy")
            })
            .collect();
        let mut peers = GoPeers {
            children,
            cold_s: 0.0,
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        for log in &logs {
            while !std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains("serving")
            {
                assert!(
                    Instant::now() < deadline,
                    "tsnet-proxy not serving: {}",
                    log.display()
                );
                if peers
                    .children
                    .iter_mut()
                    .any(|c| matches!(c.try_wait(), Ok(Some(_))))
                {
                    panic!(
                        "a tsnet-proxy exited: {}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        peers.cold_s = began.elapsed().as_secs_f64();
        peers
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for GoPeers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

/// `n` more agent nodes in one Go process, up until dropped.
fn extra_peers(bin: &Path, hs: &common::Headscale, key: &str, n: usize) -> KillOnDrop {
    let out = hs.dir().join("extra.out");
    let child = Command::new(bin)
        .arg(format!("-control={}", hs.url))
        .arg(format!("-authkey={key}"))
        .arg(format!("-dir={}", hs.dir().join("extra").display()))
        .arg(format!("-n={n}"))
        .args(["-prefix=extra", "-settle=0s", "-idle=0s", "-hold"])
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tsnet-nodes");
    let guard = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !std::fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("all_up_s")
    {
        assert!(Instant::now() < deadline, "extra peers did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    guard
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct GoTools {
    proxy: PathBuf,
    nodes: PathBuf,
}

/// Builds the Go peers from the tsffi module (same tailscale.com pin).
fn build_go_tools() -> GoTools {
    let out = std::env::temp_dir().join("portcullis-scale-bench");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/tsffi");
    let build = |name: &str| {
        let bin = out.join(name);
        let status = Command::new("go")
            .current_dir(&src)
            .args(["build", "-o"])
            .arg(&bin)
            .arg(format!("./cmd/{name}"))
            .status()
            .expect("go build");
        assert!(status.success(), "building {name}");
        bin
    };
    GoTools {
        proxy: build("tsnet-proxy"),
        nodes: build("tsnet-nodes"),
    }
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// utime + stime of `pid` in clock ticks (100 Hz).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}
