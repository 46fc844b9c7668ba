//! `serve_tcp` over an in-memory duplex against a real loopback echo
//! backend and a real SQLite audit log.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ctx::Phase;
use super::serve_tcp;
use super::test_support::{Harness, caller, config, dead_addr, echo_backend, of_kind};
use crate::audit::{Decision, Kind};

fn tcp_config(addr: std::net::SocketAddr) -> crate::config::Config {
    config(&format!(
        r#"
[[endpoint]]
name = "db"
kind = "tcp"
target = "{addr}"
ports = [5432]
allow = ["tag:agent"]
connect_timeout_ms = 2000
"#
    ))
}

#[tokio::test]
async fn allowed_caller_gets_echo_and_a_close_record_with_byte_counts() {
    let backend = echo_backend().await;
    let h = Harness::new(tcp_config(backend.addr)).await;
    let ctx = h.ctx("db").await;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn({
        let ctx = Arc::clone(&ctx);
        async move { serve_tcp(&ctx, server, caller(None, &["tag:agent"]), 5432).await }
    });

    client.write_all(b"hello portcullis").await.expect("write");
    let mut echoed = [0u8; 16];
    client.read_exact(&mut echoed).await.expect("read echo");
    assert_eq!(&echoed, b"hello portcullis");
    // Half-close: the backend sees EOF, closes, and the caller sees EOF.
    client.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.expect("read to end");
    assert!(rest.is_empty());
    served.await.expect("handler");
    assert_eq!(backend.connections(), 1);

    let records = h.finish().await;
    let open = of_kind(&records, Kind::ConnectionOpen);
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].decision, Some(Decision::Permit));
    assert_eq!(open[0].reason.as_deref(), Some("allowed_by_identity"));
    let close = of_kind(&records, Kind::ConnectionClose);
    assert_eq!(close.len(), 1, "{records:#?}");
    let close = close[0];
    assert_eq!(close.bytes_up, Some(16));
    assert_eq!(close.bytes_down, Some(16));
    assert_eq!(close.status.as_deref(), Some("ok"));
    assert_eq!(close.device.as_deref(), Some("db"));
    assert_eq!(close.endpoint.as_deref(), Some("db"));
    assert_eq!(
        close.caller.as_ref().map(|c| c.tags.clone()),
        Some(vec!["tag:agent".to_owned()])
    );
    assert!(close.duration_ms.is_some());
}

#[tokio::test]
async fn denied_caller_never_reaches_the_backend() {
    let backend = echo_backend().await;
    let h = Harness::new(tcp_config(backend.addr)).await;
    let ctx = h.ctx("db").await;
    let (mut client, server) = tokio::io::duplex(1024);
    let stranger = caller(Some("mallory@example.com"), &[]);
    serve_tcp(&ctx, server, stranger, 5432).await;

    // The handler returned and dropped its end: the caller sees EOF.
    let mut buf = Vec::new();
    client.read_to_end(&mut buf).await.expect("read");
    assert!(buf.is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(backend.connections(), 0);

    let records = h.finish().await;
    assert!(of_kind(&records, Kind::ConnectionOpen).is_empty());
    assert!(of_kind(&records, Kind::ConnectionClose).is_empty());
    let denied = of_kind(&records, Kind::ConnectionDenied);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].decision, Some(Decision::Deny));
    assert_eq!(denied[0].reason.as_deref(), Some("not_in_allow_list"));
    assert_eq!(
        denied[0].caller.as_ref().and_then(|c| c.user.clone()),
        Some("mallory@example.com".to_owned())
    );
}

#[tokio::test]
async fn backend_down_closes_the_caller_and_records_backend_unreachable() {
    let h = Harness::new(tcp_config(dead_addr())).await;
    let ctx = h.ctx("db").await;
    let (mut client, server) = tokio::io::duplex(1024);
    serve_tcp(&ctx, server, caller(None, &["tag:agent"]), 5432).await;
    let mut buf = Vec::new();
    client.read_to_end(&mut buf).await.expect("read");
    assert!(buf.is_empty());

    let records = h.finish().await;
    let close = of_kind(&records, Kind::ConnectionClose);
    assert_eq!(close.len(), 1);
    assert_eq!(close[0].reason.as_deref(), Some("backend_unreachable"));
    assert_eq!(close[0].status.as_deref(), Some("error"));
    assert_eq!(close[0].decision, Some(Decision::Permit));
}

#[tokio::test]
async fn drain_deadline_cuts_an_open_connection_and_still_records_it() {
    let backend = echo_backend().await;
    let h = Harness::new(tcp_config(backend.addr)).await;
    let (phase, phase_rx) = tokio::sync::watch::channel(Phase::Running);
    let ctx = Arc::new(Arc::unwrap_or_clone(h.ctx("db").await).with_phase(phase_rx));
    let (mut client, server) = tokio::io::duplex(1024);
    let served = tokio::spawn({
        let ctx = Arc::clone(&ctx);
        async move { serve_tcp(&ctx, server, caller(None, &["tag:agent"]), 5432).await }
    });
    client.write_all(b"ping").await.expect("write");
    let mut echoed = [0u8; 4];
    client.read_exact(&mut echoed).await.expect("read");

    // Draining leaves a TCP connection alone; stopping cuts it.
    phase.send_replace(Phase::Draining);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!served.is_finished());
    phase.send_replace(Phase::Stopped);
    tokio::time::timeout(Duration::from_secs(2), served)
        .await
        .expect("handler stops")
        .expect("handler");

    let records = h.finish().await;
    let close = of_kind(&records, Kind::ConnectionClose);
    assert_eq!(close.len(), 1);
    assert_eq!(close[0].status.as_deref(), Some("shutdown"));
    assert_eq!(close[0].bytes_up, Some(4));
    assert_eq!(close[0].bytes_down, Some(4));
}
