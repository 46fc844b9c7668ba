//! Loopback backends and tailnet clients shared by the integration tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portcullis::tailnet::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A loopback HTTP backend that answers every request with the request
/// head it received, and counts connections.
pub async fn echo_http_backend() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match s.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let body = String::from_utf8_lossy(&head).to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, count)
}

/// A loopback TCP backend that only counts connections.
pub async fn counting_backend() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(b"hello from backend\n").await;
        }
    });
    (port, count)
}

/// One HTTP/1.1 request over the tailnet; returns (status, body).
pub async fn http(
    agent: &Node,
    device: &str,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String) {
    let mut s = agent
        .dial(&format!("{device}:80"), Duration::from_secs(30))
        .await
        .expect("dial device");
    let req =
        format!("{method} {path} HTTP/1.1\r\nhost: {device}\r\n{headers}connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("read");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Forwards one local TCP port to `device:port` over the agent's node, so
/// an ordinary client library can use the tailnet connection.
pub async fn forward(agent: Node, target: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut local, _)) = listener.accept().await {
            let agent = agent.clone();
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut remote) = agent.dial(&target, Duration::from_secs(30)).await {
                    let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                }
            });
        }
    });
    port
}

/// A loopback TCP backend that echoes every byte back.
pub async fn tcp_echo_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}
