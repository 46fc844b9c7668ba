//! Benchmark of the embedded node on one local headscale tailnet, in one run:
//!
//! - bulk TCP throughput and connect+echo latency between two embedded nodes
//!   (FFI path: socketpair splice into Rust) vs two plain Go tsnet nodes
//!   (`vendor/tsffi/cmd/tsnet-pair`), same tailnet, same procedure;
//! - process RSS and idle CPU with 1, 10 and 30 embedded nodes, and the
//!   marginal cost per node.
//!
//! Run: `cargo bench --bench tailnet` (prints a table; figures, not asserts).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BULK: u64 = 256 << 20;
const DIALS: usize = 200;

fn main() {
    if let Ok(n) = std::env::var("PORTCULLIS_BENCH_NODES") {
        return nodes_child(n.parse().expect("node count"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let hs = common::Headscale::start();
    let user = hs.create_user("bench");
    let key = hs.auth_key(user, &[]);

    let ffi = rt.block_on(ffi_pair(&hs, &key));
    let go = go_pair(&hs, &key);
    println!("\n== throughput and connect latency (one tailnet, loopback) ==");
    println!(
        "{:<22} {:>12} {:>14} {:>14}",
        "pair", "MB/s", "connect p50", "connect p99"
    );
    for (name, r) in [("embedded (FFI)", &ffi), ("plain Go tsnet", &go)] {
        println!(
            "{:<22} {:>12.1} {:>11.0} us {:>11.0} us",
            name, r.mb_per_s, r.p50_us, r.p99_us
        );
    }
    println!(
        "ratio FFI/Go: throughput {:.2}x, connect p50 {:+.0} us",
        ffi.mb_per_s / go.mb_per_s,
        ffi.p50_us - go.p50_us
    );

    println!("\n== cost per node (fresh process each) ==");
    println!("{:>6} {:>10} {:>16}", "nodes", "RSS MB", "idle CPU %core");
    let mut rows = Vec::new();
    for n in [1usize, 10, 30] {
        let out = Command::new(std::env::current_exe().expect("exe"))
            .env("PORTCULLIS_BENCH_NODES", n.to_string())
            .env("BENCH_CONTROL", &hs.url)
            .env("BENCH_KEY", &key)
            .env("BENCH_DIR", hs.dir().join(format!("nodes-{n}")))
            .output()
            .expect("run child");
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("child json");
        let (rss, cpu) = (
            v["rss_mb"].as_f64().unwrap_or(0.0),
            v["cpu_pct"].as_f64().unwrap_or(0.0),
        );
        println!("{n:>6} {rss:>10.1} {cpu:>16.2}");
        rows.push((n as f64, rss, cpu));
    }
    let (first, last) = (rows[0], rows[rows.len() - 1]);
    println!(
        "marginal per node: {:.1} MB RSS, {:.2} % of a core idle",
        (last.1 - first.1) / (last.0 - first.0),
        (last.2 - first.2) / (last.0 - first.0)
    );
}

struct PairResult {
    mb_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn ffi_pair(hs: &common::Headscale, key: &str) -> PairResult {
    let (a, b) = tokio::join!(
        common::node(hs, "ffi-a", key),
        common::node(hs, "ffi-b", key)
    );
    let ip = a.ips().expect("ips")[0];
    let bulk = a.listen(7001).await.expect("listen");
    let echo = a.listen(7002).await.expect("listen");
    tokio::spawn(async move {
        while let Ok((mut c, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                if c.read_exact(&mut byte).await.is_ok() {
                    let _ = c.write_all(&byte).await;
                }
            });
        }
    });
    let sink = tokio::spawn(async move {
        let mut totals = Vec::new();
        for _ in 0..2 {
            let (mut c, _) = bulk.accept().await.expect("accept");
            let mut buf = vec![0u8; 256 << 10];
            let mut n = 0u64;
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
            totals.push((n, Instant::now()));
        }
        totals
    });
    let addr = format!("{ip}:7001");
    // Warm-up dial sets up the path, as in the Go peer.
    drop(
        b.dial(&addr, Duration::from_secs(30))
            .await
            .expect("warm dial"),
    );
    let start = Instant::now();
    let mut c = b.dial(&addr, Duration::from_secs(30)).await.expect("dial");
    let buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    while sent < BULK {
        c.write_all(&buf).await.expect("write");
        sent += buf.len() as u64;
    }
    c.shutdown().await.expect("shutdown");
    drop(c);
    let totals = sink.await.expect("sink");
    let (got, end) = totals[1];
    let mb_per_s = got as f64 / (end - start).as_secs_f64() / 1e6;

    let eaddr = format!("{ip}:7002");
    let mut lat = Vec::with_capacity(DIALS);
    for _ in 0..DIALS {
        let t = Instant::now();
        let mut c = b.dial(&eaddr, Duration::from_secs(10)).await.expect("dial");
        c.write_all(&[1]).await.expect("write");
        let mut byte = [0u8; 1];
        c.read_exact(&mut byte).await.expect("echo");
        lat.push(t.elapsed().as_micros() as f64);
    }
    lat.sort_by(f64::total_cmp);
    a.close().await.expect("close");
    b.close().await.expect("close");
    PairResult {
        mb_per_s,
        p50_us: lat[DIALS / 2],
        p99_us: lat[DIALS * 99 / 100],
    }
}

fn go_pair(hs: &common::Headscale, key: &str) -> PairResult {
    let bin = hs.dir().join("tsnet-pair");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/tsffi");
    let status = Command::new("go")
        .current_dir(&src)
        .args(["build", "-o"])
        .arg(&bin)
        .arg("./cmd/tsnet-pair")
        .status()
        .expect("go build");
    assert!(status.success(), "building tsnet-pair");
    let out = Command::new(&bin)
        .arg(format!("-control={}", hs.url))
        .arg(format!("-authkey={key}"))
        .arg(format!("-dir={}", hs.dir().join("go-pair").display()))
        .arg(format!("-bytes={BULK}"))
        .arg(format!("-dials={DIALS}"))
        .output()
        .expect("run tsnet-pair");
    assert!(
        out.status.success(),
        "tsnet-pair: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    PairResult {
        mb_per_s: v["mb_per_s"].as_f64().unwrap_or(0.0),
        p50_us: v["connect_p50"].as_f64().unwrap_or(0.0),
        p99_us: v["connect_p99"].as_f64().unwrap_or(0.0),
    }
}

/// Child mode: start `n` nodes, let them settle, report RSS and idle CPU.
fn nodes_child(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let control = std::env::var("BENCH_CONTROL").expect("control");
    let key = std::env::var("BENCH_KEY").expect("key");
    let dir = std::path::PathBuf::from(std::env::var("BENCH_DIR").expect("dir"));
    common::knobs();
    let nodes = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let b = portcullis::tailnet::NodeBuilder::new(
                format!("n{n}-{i}"),
                dir.join(format!("n{i}")),
            )
            .control_url(&control)
            .auth_key(&key)
            .up_timeout(Duration::from_secs(120));
            set.spawn(b.start());
        }
        let mut nodes = Vec::new();
        while let Some(r) = set.join_next().await {
            nodes.push(r.expect("join").expect("node up"));
        }
        nodes
    });
    std::thread::sleep(Duration::from_secs(10)); // settle: initial map, netcheck
    let (cpu0, t0) = (cpu_ticks(), Instant::now());
    std::thread::sleep(Duration::from_secs(15));
    let cpu = (cpu_ticks() - cpu0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "{}",
        serde_json::json!({"nodes": nodes.len(), "rss_mb": rss_mb(), "cpu_pct": cpu})
    );
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// utime + stime of this process, in clock ticks (100 Hz on Linux).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}
