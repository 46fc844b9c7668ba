//! The embedded node on a real headscale tailnet on loopback.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Headscale, Tailscaled, node, node_builder, socks5_connect};
use portcullis::tailnet::{Node, NodeBuilder, TailnetError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(node: &Node, port: u16) -> SocketAddr {
    SocketAddr::new(node.ips().expect("ips")[0], port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_data_both_ways_and_half_close() {
    common::trace();
    let hs = Headscale::start();
    let user = hs.create_user("alice");
    let key = hs.auth_key(user, &[]);
    let (a, b) = tokio::join!(node(&hs, "node-a", &key), node(&hs, "node-b", &key));
    let listener = a.listen(7000).await.expect("listen");

    let server = tokio::spawn(async move {
        let (mut conn, peer) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.expect("read to EOF");
        assert_eq!(got, b"ping from b");
        // The client's write side is closed; ours still works.
        conn.write_all(b"pong from a").await.expect("write");
        conn.shutdown().await.expect("half-close");
        peer
    });

    let mut conn = b
        .dial(&addr(&a, 7000).to_string(), Duration::from_secs(20))
        .await
        .expect("dial");
    conn.write_all(b"ping from b").await.expect("write");
    conn.shutdown().await.expect("half-close");
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).await.expect("read reply");
    assert_eq!(reply, b"pong from a");

    let peer = server.await.expect("server task");
    assert_eq!(
        peer.ip(),
        b.ips().expect("ips")[0],
        "accept names the dialing node"
    );
    a.close().await.expect("close a");
    b.close().await.expect("close b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whois_names_user_for_user_keys_and_tags_for_tagged_keys() {
    common::trace();
    let hs = Headscale::start();
    let alice = hs.create_user("alice");
    let admin = hs.create_user("admin");
    let user_key = hs.auth_key(alice, &[]);
    let tagged_key = hs.auth_key(admin, &["tag:agent"]);
    let (server, laptop, agent) = tokio::join!(
        node(&hs, "server", &user_key),
        node(&hs, "laptop", &user_key),
        node(&hs, "agent", &tagged_key)
    );
    let listener = server.listen(80).await.expect("listen");
    for (client, expect_user, expect_tags) in [
        (&laptop, Some("alice@"), vec![]),
        (&agent, None, vec!["tag:agent".to_string()]),
    ] {
        let _conn = client
            .dial(&addr(&server, 80).to_string(), Duration::from_secs(20))
            .await
            .expect("dial");
        let (_c, peer) = listener.accept().await.expect("accept");
        let caller = server.whois(peer).await.expect("whois");
        assert_eq!(caller.addr, peer);
        let login = caller.user.as_deref().map(|u| u.trim_end_matches('@'));
        assert_eq!(login, expect_user.map(|u| u.trim_end_matches('@')));
        assert_eq!(caller.tags, expect_tags);
        assert!(
            caller.node.starts_with(client.hostname()),
            "{} vs {}",
            caller.node,
            client.hostname()
        );
        assert!(!caller.node_id.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_connections_are_attributed_to_the_right_peer() {
    common::trace();
    let hs = Headscale::start();
    let alice = hs.create_user("alice");
    let admin = hs.create_user("admin");
    let user_key = hs.auth_key(alice, &[]);
    let tagged_key = hs.auth_key(admin, &["tag:agent"]);
    let (server, p1, p2) = tokio::join!(
        node(&hs, "server", &user_key),
        node(&hs, "peer-user", &user_key),
        node(&hs, "peer-tagged", &tagged_key)
    );
    let listener = server.listen(9000).await.expect("listen");
    let srv = server.clone();
    let acceptor = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (mut conn, peer) = listener.accept().await.expect("accept");
            let srv = srv.clone();
            tasks.spawn(async move {
                // Identify first, then read what the client says it is.
                let caller = srv.whois(peer).await.expect("whois");
                let mut claimed = String::new();
                conn.read_to_string(&mut claimed).await.expect("read");
                let seen = caller
                    .node
                    .split('.')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                conn.write_all(seen.as_bytes()).await.expect("write");
                conn.shutdown().await.expect("shutdown");
                (claimed, seen)
            });
        }
        let mut pairs = Vec::new();
        while let Some(r) = tasks.join_next().await {
            pairs.push(r.expect("task"));
        }
        pairs
    });
    let target = addr(&server, 9000).to_string();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..32 {
        let client = if i % 2 == 0 { p1.clone() } else { p2.clone() };
        let target = target.clone();
        clients.spawn(async move {
            let mut conn = client
                .dial(&target, Duration::from_secs(30))
                .await
                .expect("dial");
            conn.write_all(client.hostname().as_bytes())
                .await
                .expect("write");
            conn.shutdown().await.expect("shutdown");
            let mut seen = String::new();
            conn.read_to_string(&mut seen).await.expect("read");
            assert_eq!(
                seen,
                client.hostname(),
                "server attributed our connection to another peer"
            );
        });
    }
    while let Some(r) = clients.join_next().await {
        r.expect("client");
    }
    let pairs = acceptor.await.expect("acceptor");
    assert_eq!(pairs.len(), 32);
    for (claimed, seen) in pairs {
        assert_eq!(claimed, seen);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_tailscaled_peer_reaches_our_listener() {
    common::trace();
    let hs = Headscale::start();
    let alice = hs.create_user("alice");
    let key = hs.auth_key(alice, &[]);
    let server = node(&hs, "server", &key).await;
    let listener = server.listen(8080).await.expect("listen");
    let target = addr(&server, 8080);
    let (url, k) = (hs.url.clone(), key.clone());
    let tsd = tokio::task::spawn_blocking(move || Tailscaled::start(&url, &k, "external"))
        .await
        .expect("tailscaled");
    let srv = server.clone();
    let accept = tokio::spawn(async move {
        let (mut conn, peer) = listener.accept().await.expect("accept");
        let caller = srv.whois(peer).await.expect("whois");
        conn.write_all(b"hello external").await.expect("write");
        conn.shutdown().await.expect("shutdown");
        caller
    });
    let mut stream = connect_retrying(tsd.socks5, target).await;
    let mut got = String::new();
    stream.read_to_string(&mut got).await.expect("read");
    assert_eq!(got, "hello external");
    let caller = accept.await.expect("accept task");
    assert_eq!(caller.addr.ip(), tsd.ip());
    assert!(caller.node.starts_with("external"), "{}", caller.node);
}

/// The external peer may need a moment to learn about our node.
async fn connect_retrying(proxy: SocketAddr, target: SocketAddr) -> tokio::net::TcpStream {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match socks5_connect(proxy, target).await {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("socks5 connect: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("external peer could not reach {target}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_auth_key_fails_start_within_deadline() {
    let hs = Headscale::start();
    let started = Instant::now();
    let err = node_builder(&hs, "bad-key", "hskey-auth-notarealkey-0000000000000000")
        .up_timeout(Duration::from_secs(20))
        .start()
        .await
        .expect_err("a wrong key must not join");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(matches!(err, TailnetError::Up { .. }), "{text}");
    assert!(text.contains("bad-key"), "error names the node: {text}");
    assert!(
        text.to_lowercase().contains("key") || text.contains("not running"),
        "error says why: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_control_url_fails_start_within_deadline() {
    common::knobs();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::headscale::free_port();
    let started = Instant::now();
    let err = NodeBuilder::new("lonely", dir.path().join("lonely"))
        .control_url(format!("http://127.0.0.1:{port}"))
        .auth_key("hskey-auth-whatever")
        .up_timeout(Duration::from_secs(5))
        .start()
        .await
        .expect_err("no control server, no tailnet");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let text = err.to_string();
    assert!(
        text.contains("lonely") && text.contains("not running on the tailnet after 5s"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_same_state_dir_needs_no_key_and_dirs_are_exclusive() {
    common::trace();
    let hs = Headscale::start();
    let alice = hs.create_user("alice");
    let key = hs.auth_key(alice, &[]);
    let first = node(&hs, "sticky", &key).await;
    let ip = first.ips().expect("ips");

    // A second node on the same state dir is refused while the first runs.
    let sticky_dir = hs.dir().join("nodes").join("sticky");
    let err = NodeBuilder::new("intruder", &sticky_dir)
        .control_url(&hs.url)
        .auth_key(&key)
        .start()
        .await
        .expect_err("shared state dir");
    assert!(matches!(err, TailnetError::StateDirInUse { .. }), "{err}");
    assert!(
        err.to_string().contains("already used by another node"),
        "{err}"
    );

    first.close().await.expect("close");
    let again = NodeBuilder::new("sticky", &sticky_dir)
        .control_url(&hs.url)
        .up_timeout(Duration::from_secs(60))
        .start()
        .await
        .expect("restart without a key");
    assert_eq!(
        again.ips().expect("ips"),
        ip,
        "same node identity after restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertised_tags_reach_the_control_server() {
    // headscale gives pre-auth-key nodes the key's tags and refuses tags a
    // client requests itself, naming them: that refusal shows the node sent
    // exactly the tags it was built with.
    let hs = Headscale::start();
    let admin = hs.create_user("admin");
    let key = hs.auth_key(admin, &[]);
    let err = common::node_builder(&hs, "tagged", &key)
        .tags(["tag:ops", "tag:agent"])
        .up_timeout(Duration::from_secs(20))
        .start()
        .await
        .expect_err("headscale refuses client-requested tags with a pre-auth key");
    assert!(
        err.to_string()
            .contains("requested tags [tag:ops tag:agent]"),
        "{err}"
    );
    // And a malformed tag never leaves the process.
    let err = common::node_builder(&hs, "badtag", &key)
        .tags(["ops"])
        .start()
        .await
        .expect_err("bad tag");
    assert!(matches!(err, TailnetError::InvalidConfig { .. }), "{err}");
}
