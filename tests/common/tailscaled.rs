//! The real `tailscaled` in userspace-networking mode as an external agent
//! peer, with a SOCKS5 and an HTTP proxy on loopback into the tailnet.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::headscale::{CLIENT_KNOBS, free_port};
use super::tools;

/// A running tailscaled joined to the test tailnet; stopped on drop.
pub struct Tailscaled {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// SOCKS5 proxy into the tailnet (no auth).
    pub socks5: SocketAddr,
    /// HTTP proxy into the tailnet.
    pub http_proxy: SocketAddr,
}

impl Tailscaled {
    /// Starts tailscaled and brings it up on the tailnet at `control_url` as `hostname`.
    pub fn start(control_url: &str, auth_key: &str, hostname: &str) -> Tailscaled {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-tsd-")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("tailscaled.sock");
        let socks5: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http_proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = std::fs::File::create(dir.path().join("tailscaled.log")).expect("log");
        let child = Command::new(tools::tailscaled())
            .arg("--tun=userspace-networking")
            .arg(format!("--statedir={}", dir.path().join("state").display()))
            .arg(format!("--socket={}", socket.display()))
            .arg("--port=0")
            .arg(format!("--socks5-server={socks5}"))
            .arg(format!("--outbound-http-proxy-listen={http_proxy}"))
            .arg("--no-logs-no-support")
            .envs(CLIENT_KNOBS.iter().copied())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn tailscaled");
        let tsd = Tailscaled {
            child,
            dir,
            socket,
            socks5,
            http_proxy,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !tsd.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "tailscaled socket never appeared:\n{}",
                tsd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let up = tsd.cli(&[
            "up",
            &format!("--login-server={control_url}"),
            &format!("--auth-key={auth_key}"),
            &format!("--hostname={hostname}"),
            "--accept-dns=false",
            "--timeout=60s",
        ]);
        assert!(
            up.status.success(),
            "tailscale up failed: {}{}\n{}",
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr),
            tsd.log()
        );
        tsd
    }

    /// Runs the tailscale CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(tools::tailscale())
            .arg(format!("--socket={}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tailscale cli")
    }

    /// The peer's tailnet IPv4 address.
    pub fn ip(&self) -> IpAddr {
        let out = self.cli(&["ip", "-4"]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("tailscale ip -4")
    }

    /// tailscaled's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tailscaled.log")).unwrap_or_default()
    }
}

impl Drop for Tailscaled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a TCP connection through a SOCKS5 proxy (RFC 1928, no auth).
pub async fn socks5_connect(
    proxy: SocketAddr,
    target: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).await?;
    if reply != [5, 0] {
        return Err(std::io::Error::other(format!(
            "socks5 auth reply {reply:?}"
        )));
    }
    let mut req = vec![5, 1, 0];
    match target.ip() {
        IpAddr::V4(ip) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            req.push(4);
            req.extend_from_slice(&ip.octets());
        }
    }
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[1] != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("socks5 connect to {target} failed with code {}", head[1]),
        ));
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await?;
            usize::from(len[0]) + 2
        }
        other => {
            return Err(std::io::Error::other(format!(
                "socks5 address type {other}"
            )));
        }
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).await?;
    Ok(s)
}
