//! Memory of `portcullis run` with 10 tcp devices: idle, at the peak of a
//! burst of 1,000 simultaneous connections (100 per device), and every
//! 10 s for 60 s after it, split into Go heap, other anonymous memory (the
//! Rust allocator, stacks) and mapped files (code).
//!
//! `cargo bench --bench memory`

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::connector::Connector;
use common::net::tcp_echo_backend;
use common::{Headscale, node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEVICES: usize = 10;
const BURST: usize = 1000;

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// (Go heap, other anonymous, mapped files) resident MiB; the Go runtime
/// maps its heap arenas below the 0x7f... range of glibc arenas and stacks.
fn split_mib(pid: u32) -> (u64, u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut sums, mut class) = ([0u64; 3], 0);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, _)) = first.split_once('-')
            && let Ok(start) = u64::from_str_radix(start, 16)
        {
            let file = fields.nth(4).is_some_and(|p| p.starts_with('/'));
            class = if file {
                2
            } else if start < 0x5000_0000_0000 {
                0
            } else {
                1
            };
        } else if first == "Rss:" {
            sums[class] += fields.next().and_then(|k| k.parse().ok()).unwrap_or(0);
        }
    }
    (sums[0] / 1024, sums[1] / 1024, sums[2] / 1024)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let hs = Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let agent_key = hs.auth_key(admin, &["tag:agent"]);
    let echo = rt.block_on(tcp_echo_backend());
    let dir = hs.dir().join("memory-bench");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut text = format!(
        "[tailnet]\ncontrol_url = \"{}\"\nauth_key_env = \"PORTCULLIS_AUTH_KEY\"\nstate_dir = \"{}\"\n",
        hs.url,
        dir.join("state").display()
    );
    for i in 0..DEVICES {
        text.push_str(&format!(
            "\n[[endpoint]]\nname = \"dev{i}\"\nkind = \"tcp\"\ntarget = \"127.0.0.1:{echo}\"\nports = [7000]\nallow = [\"tag:agent\"]\n"
        ));
    }
    let file = dir.join("endpoints.toml");
    std::fs::write(&file, text).expect("config");
    let audit = format!("sqlite://{}", dir.join("audit.db").display());
    let conn = Connector::start(&file, &device_key, &audit);
    let pid = conn.pid();

    rt.block_on(async {
        let agent = node(&hs, "agent", &agent_key).await;
        for i in 0..DEVICES {
            let mut s = agent
                .dial(&format!("dev{i}:7000"), Duration::from_secs(60))
                .await
                .expect("warm dial");
            s.write_all(b"x").await.expect("warm");
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("warm echo");
        }
        tokio::time::sleep(Duration::from_secs(15)).await;
        let idle = rss_mib(pid);
        println!("portcullis run, {DEVICES} tcp devices (release build):");
        println!("  idle                     RSS {idle:>4} MiB  (Go heap, other anon, files: {:?})", split_mib(pid));

        let peak = Arc::new(AtomicU64::new(idle));
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (peak, sampling) = (peak.clone(), sampling.clone());
            tokio::spawn(async move {
                while sampling.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_mib(pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let barrier = Arc::new(tokio::sync::Barrier::new(BURST));
        let tasks: Vec<_> = (0..BURST)
            .map(|i| {
                let (agent, barrier) = (agent.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let mut s = agent
                        .dial(&format!("dev{}:7000", i % DEVICES), Duration::from_secs(60))
                        .await
                        .ok()?;
                    s.write_all(&[7u8; 4096]).await.ok()?;
                    let mut back = vec![0u8; 4096];
                    s.read_exact(&mut back).await.ok()?;
                    Some(())
                })
            })
            .collect();
        let mut echoed = 0;
        for t in tasks {
            if matches!(t.await, Ok(Some(()))) {
                echoed += 1;
            }
        }
        sampling.store(false, Ordering::Relaxed);
        sampler.await.expect("sampler");
        println!(
            "  burst of {BURST} (echoed {echoed}) peak RSS {:>4} MiB",
            peak.load(Ordering::Relaxed)
        );
        for s in (10..=60).step_by(10) {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let rss = rss_mib(pid);
            println!(
                "  {s:>2} s after the burst      RSS {rss:>4} MiB  (Go heap, other anon, files: {:?}){}",
                split_mib(pid),
                if s == 60 {
                    format!("  = {:.2}x idle", rss as f64 / idle.max(1) as f64)
                } else {
                    String::new()
                }
            );
        }
    });
    drop(conn);
}
