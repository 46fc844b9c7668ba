//! Benchmark of Portcullis devices against plain proxies, on one local
//! headscale tailnet, in one run:
//!
//! - throughput (128 MiB downloaded in total, split over 1 or 16 concurrent
//!   connections) and small request/response latency over kept-alive
//!   connections (1 or 16 at once), from one embedded client node dialing
//!   by MagicDNS name, through
//!   - a Portcullis `tcp` device vs a plain Go tsnet `io.Copy` proxy
//!     (`vendor/tsffi/cmd/tsnet-proxy`) to the same loopback TCP backend,
//!   - a Portcullis `http` device vs tsnsrv (`$TSNSRV_BIN`, optional) to the same
//!     loopback HTTP/1.1 backend;
//! - idle RSS of `portcullis run` with 1 and with 10 devices (marginal MB
//!   per device) vs the idle RSS of one tsnsrv process (one device).
//!
//! Run: `cargo bench --bench devices` (prints a table; figures, not asserts).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::connector::Connector;
use common::headscale::CLIENT_KNOBS;
use portcullis::tailnet::Node;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixStream};

/// Bytes downloaded per throughput measurement (split over the connections).
const BULK: u64 = 128 << 20;
/// Response size of a latency round trip.
const SMALL: u64 = 64;
/// Latency samples per measurement (split over the connections).
const SAMPLES: usize = 800;
/// Concurrent connections.
const CONCURRENCY: [usize; 2] = [1, 16];
/// Upper bound on any one measurement.
const PHASE: Duration = Duration::from_secs(90);
/// Idle time before reading a process's RSS.
const IDLE: Duration = Duration::from_secs(5);
/// Devices in the larger memory run.
const MANY: usize = 10;

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    /// Request: 8-byte big-endian length N; response: N bytes. Repeats.
    Tcp,
    /// `GET /blob/N HTTP/1.1`; response: N-byte body. Keep-alive.
    Http,
}

struct Row {
    mb_per_s: Result<f64, String>,
    p50_us: Result<f64, String>,
    p99_us: f64,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let hs = common::Headscale::start();
    let admin = hs.create_user("admin");
    let device_key = hs.auth_key(admin, &["tag:portcullis"]);
    let client_key = hs.auth_key(admin, &["tag:agent"]);
    let (tcp_port, http_port) = rt.block_on(async { (tcp_backend().await, http_backend().await) });

    // Peers: build in parallel, then start them all at once.
    let go_proxy = std::thread::spawn({
        let bin = hs.dir().join("tsnet-proxy");
        move || build_go_proxy(&bin)
    });
    // tsnsrv is not in any registry reachable here; compare against it by
    // pointing TSNSRV_BIN at a tsnsrv binary built separately.
    let tsnsrv_bin = std::env::var("TSNSRV_BIN")
        .map(std::path::PathBuf::from)
        .map_err(|_| "set TSNSRV_BIN to a tsnsrv binary to compare".to_string());
    let go_proxy = go_proxy.join().expect("go build thread");

    let dir = hs.dir().join("perf");
    let perf_cfg = write_config(
        &hs,
        &dir,
        &format!(
            r#"
[[endpoint]]
name = "tcpdev"
kind = "tcp"
target = "127.0.0.1:{tcp_port}"
ports = [7000]
allow = ["tag:agent"]

[[endpoint]]
name = "httpdev"
kind = "http"
target = "127.0.0.1:{http_port}"
allow = ["tag:agent"]
[endpoint.http]
methods = ["GET"]
paths = ["/blob/*"]
identity_headers = true
"#
        ),
    );
    let perf = start_connector(&perf_cfg, &device_key, &dir);
    let mut go = Guard::spawn(
        "tsnet-proxy",
        Command::new(&go_proxy)
            .arg(format!("-control={}", hs.url))
            .arg(format!("-authkey={device_key}"))
            .arg(format!("-dir={}", hs.dir().join("goproxy").display()))
            .arg("-name=goproxy")
            .arg("-port=7000")
            .arg(format!("-target=127.0.0.1:{tcp_port}")),
        hs.dir().join("goproxy.log"),
    );
    let tsnsrv = tsnsrv_bin.map(|bin| {
        let mut cmd = Command::new(bin);
        cmd.env("TS_URL", &hs.url)
            .env("TS_AUTHKEY", &device_key)
            .envs(CLIENT_KNOBS.iter().copied())
            .args(["-name=tsnsrv", "-plaintext", "-listenAddr=:80"])
            .args(["-prometheusAddr=", "-suppressTailnetDialer"])
            .arg(format!("-stateDir={}", hs.dir().join("tsnsrv").display()))
            .arg(format!("http://127.0.0.1:{http_port}"));
        Guard::spawn("tsnsrv", &mut cmd, hs.dir().join("tsnsrv.log"))
    });
    go.wait_for("serving", Duration::from_secs(120));
    let tsnsrv = tsnsrv.and_then(|mut g| {
        g.try_wait_for("Serving", Duration::from_secs(120))?;
        Ok(g)
    });
    let client = rt.block_on(common::node(&hs, "client", &client_key));

    std::thread::sleep(IDLE);
    let tsnsrv_rss = tsnsrv
        .as_ref()
        .map(|g| rss_mb(g.pid()))
        .map_err(Clone::clone);
    let go_rss = rss_mb(go.pid());
    let perf_rss = rss_mb(perf.pid());

    let targets = [
        ("portcullis tcp device", "tcpdev:7000", Proto::Tcp, Ok(())),
        ("Go tsnet io.Copy proxy", "goproxy:7000", Proto::Tcp, Ok(())),
        ("portcullis http device", "httpdev:80", Proto::Http, Ok(())),
        (
            "tsnsrv",
            "tsnsrv:80",
            Proto::Http,
            tsnsrv.as_ref().map(|_| ()).map_err(Clone::clone),
        ),
    ];
    let mut rows = Vec::new();
    for (label, addr, proto, up) in targets {
        for conc in CONCURRENCY {
            let row = match &up {
                Ok(()) => rt.block_on(measure(&client, addr, proto, conc)),
                Err(e) => Row {
                    mb_per_s: Err(e.clone()),
                    p50_us: Err(e.clone()),
                    p99_us: 0.0,
                },
            };
            eprintln!("measured {label} x{conc}");
            rows.push((label, conc, row));
        }
    }
    drop(perf);
    drop(go);
    drop(tsnsrv);

    // Memory: idle `portcullis run` with 1 and with MANY tcp devices.
    let mem_dirs = [hs.dir().join("mem-1"), hs.dir().join("mem-many")];
    let one = start_connector(
        &write_config(&hs, &mem_dirs[0], &tcp_endpoints("one", 1, tcp_port)),
        &device_key,
        &mem_dirs[0],
    );
    let many = start_connector(
        &write_config(&hs, &mem_dirs[1], &tcp_endpoints("many", MANY, tcp_port)),
        &device_key,
        &mem_dirs[1],
    );
    std::thread::sleep(IDLE);
    let (rss_one, rss_many) = (rss_mb(one.pid()), rss_mb(many.pid()));
    drop(one);
    drop(many);
    rt.block_on(async {
        let _ = client.close().await;
    });

    report(&rows, perf_rss, go_rss, &tsnsrv_rss, rss_one, rss_many);
}

fn report(
    rows: &[(&str, usize, Row)],
    perf_rss: f64,
    go_rss: f64,
    tsnsrv_rss: &Result<f64, String>,
    rss_one: f64,
    rss_many: f64,
) {
    println!("\n== devices: one client node, one headscale tailnet, loopback ==");
    println!(
        "throughput: {} MiB downloaded in total, split over the connections; \
         latency: {SMALL}-byte responses over kept-alive connections",
        BULK >> 20
    );
    println!(
        "tsnsrv: $TSNSRV_BIN, -plaintext -listenAddr=:80 -suppressTailnetDialer, whois headers on"
    );
    println!(
        "{:<24} {:>5} {:>10} {:>12} {:>12}",
        "path", "conns", "MB/s", "p50", "p99"
    );
    for (label, conc, r) in rows {
        let mb = r
            .mb_per_s
            .as_ref()
            .map_or_else(|_| "n/a".into(), |v| format!("{v:.1}"));
        let (p50, p99) = r.p50_us.as_ref().map_or_else(
            |_| ("n/a".into(), "n/a".into()),
            |v| (format!("{v:.0} us"), format!("{:.0} us", r.p99_us)),
        );
        println!("{label:<24} {conc:>5} {mb:>10} {p50:>12} {p99:>12}");
        for e in [r.mb_per_s.as_ref().err(), r.p50_us.as_ref().err()]
            .into_iter()
            .flatten()
        {
            println!("    ({e})");
        }
    }
    let find = |label: &str, conc: usize| {
        rows.iter()
            .find(|(l, c, _)| *l == label && *c == conc)
            .map(|(_, _, r)| r)
            .expect("row")
    };
    println!("\n== ratios (goals: >= 0.9x throughput, <= +100 us p50) ==");
    for (ours, theirs) in [
        ("portcullis tcp device", "Go tsnet io.Copy proxy"),
        ("portcullis http device", "tsnsrv"),
    ] {
        for conc in CONCURRENCY {
            let (a, b) = (find(ours, conc), find(theirs, conc));
            let tput = match (&a.mb_per_s, &b.mb_per_s) {
                (Ok(x), Ok(y)) => {
                    let r = x / y;
                    format!("{r:.2}x ({})", met(r >= 0.9))
                }
                _ => "n/a".into(),
            };
            let lat = match (&a.p50_us, &b.p50_us) {
                (Ok(x), Ok(y)) => {
                    let d = x - y;
                    format!("{d:+.0} us ({})", met(d <= 100.0))
                }
                _ => "n/a".into(),
            };
            println!("{ours} / {theirs}, {conc} conn: throughput {tput}, p50 {lat}");
        }
    }
    println!("\n== memory (VmRSS after devices are up and {IDLE:?} idle) ==");
    println!("{:<40} {:>10}", "process", "RSS MB");
    println!("{:<40} {rss_one:>10.1}", "portcullis run, 1 tcp device");
    println!(
        "{:<40} {rss_many:>10.1}",
        format!("portcullis run, {MANY} tcp devices")
    );
    println!(
        "{:<40} {perf_rss:>10.1}",
        "portcullis run, tcp + http (perf run)"
    );
    println!("{:<40} {go_rss:>10.1}", "Go tsnet io.Copy proxy (1 node)");
    match tsnsrv_rss {
        Ok(v) => println!("{:<40} {v:>10.1}", "tsnsrv (1 device)"),
        Err(e) => println!("{:<40} {:>10}  ({e})", "tsnsrv (1 device)", "n/a"),
    }
    let per_device = (rss_many - rss_one) / (MANY - 1) as f64;
    println!("marginal per portcullis device: {per_device:.1} MB");
    match tsnsrv_rss {
        Ok(t) => println!(
            "per device vs tsnsrv per process: {per_device:.1} / {t:.1} MB = {:.2}x ({}); \
             first device (whole process) {rss_one:.1} MB",
            per_device / t,
            met(per_device < *t)
        ),
        Err(_) => println!("per device vs tsnsrv per process: n/a (tsnsrv not measured)"),
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

/// Throughput and latency through `addr` with `conc` connections.
async fn measure(client: &Node, addr: &str, proto: Proto, conc: usize) -> Row {
    // Warm-up: set up the path and the device's upstream.
    let warm = async {
        let mut c = Conn::dial(client, addr, proto).await?;
        for _ in 0..3 {
            c.request(SMALL).await?;
        }
        Ok::<_, String>(())
    };
    if let Err(e) = tokio::time::timeout(PHASE, warm)
        .await
        .unwrap_or_else(|_| Err("warm-up timed out".into()))
    {
        return Row {
            mb_per_s: Err(e.clone()),
            p50_us: Err(e),
            p99_us: 0.0,
        };
    }
    let mb_per_s = throughput(client, addr, proto, conc).await;
    match latency(client, addr, proto, conc).await {
        Ok(mut lat) => {
            lat.sort_by(f64::total_cmp);
            Row {
                mb_per_s,
                p50_us: Ok(lat[lat.len() / 2]),
                p99_us: lat[lat.len() * 99 / 100],
            }
        }
        Err(e) => Row {
            mb_per_s,
            p50_us: Err(e),
            p99_us: 0.0,
        },
    }
}

/// MB/s for BULK bytes split over `conc` fresh connections, timed from the
/// first dial to the last byte.
async fn throughput(client: &Node, addr: &str, proto: Proto, conc: usize) -> Result<f64, String> {
    let each = BULK / conc as u64;
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (client, addr) = (client.clone(), addr.to_string());
        set.spawn(async move {
            let mut c = Conn::dial(&client, &addr, proto).await?;
            c.request(each).await
        });
    }
    let all = tokio::time::timeout(PHASE, async {
        let mut total = 0u64;
        while let Some(r) = set.join_next().await {
            total += r.map_err(|e| e.to_string())??;
        }
        Ok::<_, String>(total)
    })
    .await
    .map_err(|_| format!("throughput: not done within {PHASE:?}"))??;
    Ok(all as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// Round-trip times (us) of SAMPLES small requests over `conc` kept-alive
/// connections, all dialed and warmed before timing starts.
async fn latency(client: &Node, addr: &str, proto: Proto, conc: usize) -> Result<Vec<f64>, String> {
    let each = SAMPLES / conc;
    let barrier = Arc::new(tokio::sync::Barrier::new(conc));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (client, addr, barrier) = (client.clone(), addr.to_string(), barrier.clone());
        set.spawn(async move {
            let mut c = Conn::dial(&client, &addr, proto).await?;
            c.request(SMALL).await?;
            barrier.wait().await;
            let mut lat = Vec::with_capacity(each);
            for _ in 0..each {
                let t = Instant::now();
                c.request(SMALL).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<_, String>(lat)
        });
    }
    tokio::time::timeout(PHASE, async {
        let mut all = Vec::with_capacity(SAMPLES);
        while let Some(r) = set.join_next().await {
            all.extend(r.map_err(|e| e.to_string())??);
        }
        Ok(all)
    })
    .await
    .map_err(|_| format!("latency: not done within {PHASE:?}"))?
}

/// A client connection over the tailnet speaking the backend's protocol.
struct Conn {
    io: BufReader<UnixStream>,
    proto: Proto,
    host: String,
    buf: Vec<u8>,
}

impl Conn {
    async fn dial(client: &Node, addr: &str, proto: Proto) -> Result<Conn, String> {
        let s = client
            .dial(addr, Duration::from_secs(30))
            .await
            .map_err(|e| format!("dial {addr}: {e}"))?;
        Ok(Conn {
            io: BufReader::with_capacity(64 << 10, s),
            proto,
            host: addr.split(':').next().unwrap_or_default().to_string(),
            buf: vec![0u8; 256 << 10],
        })
    }

    /// One request for `n` bytes; returns the body bytes received.
    async fn request(&mut self, n: u64) -> Result<u64, String> {
        let ioe = |e: std::io::Error| e.to_string();
        match self.proto {
            Proto::Tcp => {
                self.io
                    .get_mut()
                    .write_all(&n.to_be_bytes())
                    .await
                    .map_err(ioe)?;
                self.read_n(n).await
            }
            Proto::Http => {
                let req = format!("GET /blob/{n} HTTP/1.1\r\nhost: {}\r\n\r\n", self.host);
                self.io
                    .get_mut()
                    .write_all(req.as_bytes())
                    .await
                    .map_err(ioe)?;
                let mut status = String::new();
                self.io.read_line(&mut status).await.map_err(ioe)?;
                if !status.starts_with("HTTP/1.1 200") {
                    return Err(format!("response status: {:?}", status.trim_end()));
                }
                let (mut length, mut chunked) = (None, false);
                loop {
                    let mut line = String::new();
                    if self.io.read_line(&mut line).await.map_err(ioe)? == 0 {
                        return Err("eof in response head".into());
                    }
                    let line = line.trim_end().to_ascii_lowercase();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("content-length:") {
                        length = v.trim().parse::<u64>().ok();
                    } else if line.starts_with("transfer-encoding:") && line.contains("chunked") {
                        chunked = true;
                    }
                }
                let got = if chunked {
                    self.read_chunked().await?
                } else {
                    self.read_n(length.ok_or("no content-length")?).await?
                };
                if got != n {
                    return Err(format!("body of {got} bytes, expected {n}"));
                }
                Ok(got)
            }
        }
    }

    async fn read_n(&mut self, n: u64) -> Result<u64, String> {
        let mut left = n;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let k = self
                .io
                .read(&mut self.buf[..want])
                .await
                .map_err(|e| e.to_string())?;
            if k == 0 {
                return Err(format!("eof after {} of {n} bytes", n - left));
            }
            left -= k as u64;
        }
        Ok(n)
    }

    async fn read_chunked(&mut self) -> Result<u64, String> {
        let mut total = 0;
        loop {
            let mut line = String::new();
            self.io
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?;
            let size = line.trim_end().split(';').next().unwrap_or_default();
            let size = u64::from_str_radix(size, 16).map_err(|_| format!("chunk size {line:?}"))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let mut t = String::new();
                    let k = self.io.read_line(&mut t).await.map_err(|e| e.to_string())?;
                    if k == 0 || t.trim_end().is_empty() {
                        return Ok(total);
                    }
                }
            }
            total += self.read_n(size).await?;
            let mut crlf = String::new();
            self.io
                .read_line(&mut crlf)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
}

static BLOB: [u8; 256 << 10] = [b'x'; 256 << 10];

async fn write_blob<W: AsyncWriteExt + Unpin>(w: &mut W, mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let k = n.min(BLOB.len() as u64) as usize;
        w.write_all(&BLOB[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}

/// Loopback TCP backend: reads an 8-byte length, writes that many bytes.
async fn tcp_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut len = [0u8; 8];
                while s.read_exact(&mut len).await.is_ok() {
                    if write_blob(&mut s, u64::from_be_bytes(len)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Loopback HTTP/1.1 keep-alive backend: `GET /blob/N` returns N bytes.
async fn http_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                loop {
                    let mut first = String::new();
                    match s.read_line(&mut first).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    loop {
                        let mut line = String::new();
                        match s.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line.trim_end().is_empty() => break,
                            Ok(_) => {}
                        }
                    }
                    let n = first
                        .split_whitespace()
                        .nth(1)
                        .and_then(|p| p.strip_prefix("/blob/"))
                        .and_then(|n| n.parse::<u64>().ok());
                    let w = s.get_mut();
                    let ok = match n {
                        Some(n) => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                                 content-length: {n}\r\n\r\n"
                            );
                            w.write_all(head.as_bytes()).await.is_ok()
                                && write_blob(w, n).await.is_ok()
                        }
                        None => w
                            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                            .await
                            .is_ok(),
                    };
                    if !ok {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// `n` tcp endpoints named `<prefix>-<i>`.
fn tcp_endpoints(prefix: &str, n: usize, port: u16) -> String {
    (0..n)
        .map(|i| {
            format!(
                "\n[[endpoint]]\nname = \"{prefix}-{i}\"\nkind = \"tcp\"\n\
                 target = \"127.0.0.1:{port}\"\nports = [7000]\nallow = [\"tag:agent\"]\n"
            )
        })
        .collect()
}

/// Writes `<dir>/endpoints.toml` for the tailnet plus `endpoints`. No
/// `tags`: the auth key carries `tag:portcullis` already, and this headscale
/// refuses the devices' advertised tags ("requested tags ... not
/// permitted").
fn write_config(hs: &common::Headscale, dir: &Path, endpoints: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("config dir");
    let file = dir.join("endpoints.toml");
    let text = format!(
        r#"# devices bench
[tailnet]
control_url = "{url}"
auth_key_env = "PORTCULLIS_AUTH_KEY"
state_dir = "{state}"
{endpoints}"#,
        url = hs.url,
        state = dir.join("state").display(),
    );
    std::fs::write(&file, text).expect("write config");
    file
}

fn start_connector(config: &Path, key: &str, dir: &Path) -> Connector {
    let audit = format!("sqlite://{}", dir.join("audit.db").display());
    Connector::start(config, key, &audit)
}

/// Builds the Go proxy from the tsffi module (same tailscale.com pin).
fn build_go_proxy(bin: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/tsffi");
    let status = Command::new("go")
        .current_dir(&src)
        .args(["build", "-o"])
        .arg(bin)
        .arg("./cmd/tsnet-proxy")
        .status()
        .expect("go build");
    assert!(status.success(), "building tsnet-proxy");
    bin.to_path_buf()
}

/// A child process killed on drop, output in a log file.
struct Guard {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Guard {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Guard {
        let out = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Guard { name, child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_wait_for(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before {needle:?}: {}",
                    self.name,
                    self.output().trim_end()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("{}: no {needle:?} within {timeout:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        if let Err(e) = self.try_wait_for(needle, timeout) {
            panic!("{e}");
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of a process in MB (0 if unreadable).
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
