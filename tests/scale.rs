//! What keeps many devices cheap, on a real headscale tailnet: the
//! recommended tailnet policy hides devices from each other, traffic takes
//! the direct path, and a restart does not resend the auth key.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Headscale, node, node_builder};
use portcullis::tailnet::{Node, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = include_str!("../examples/tailnet-policy.hujson");

/// Creates a reusable pre-auth key; returns (id, key).
fn key_with_id(hs: &Headscale, user: u64, tags: &str) -> (u64, String) {
    let uid = user.to_string();
    let v = hs.cli(&[
        "preauthkeys",
        "create",
        "--user",
        &uid,
        "--reusable",
        "--expiration",
        "1h",
        "--tags",
        tags,
    ]);
    let id = v["id"]
        .as_u64()
        .or_else(|| v["id"].as_str().and_then(|s| s.parse().ok()))
        .expect("key id");
    (id, v["key"].as_str().expect("key").to_owned())
}

/// Polls `node`'s peers until `done` holds for them, or panics with them.
async fn peers_until(node: &Node, what: &str, done: impl Fn(&[Peer]) -> bool) -> Vec<Peer> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let peers = node.peers().await.expect("peers");
        if done(&peers) {
            return peers;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {what}; peers: {peers:?}",
            node.hostname()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn names(peers: &[Peer]) -> Vec<&str> {
    peers
        .iter()
        .map(|p| p.name.split('.').next().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommended_policy_devices_see_only_agents_over_a_direct_path() {
    common::trace();
    let hs = Headscale::start_with_policy(POLICY);
    let admin = hs.create_user("admin");
    let (_, agent_key) = key_with_id(&hs, admin, "tag:agent");
    let (_, device_key) = key_with_id(&hs, admin, "tag:portcullis");
    // The agent first: headscale 0.29 sends peers unfiltered while the
    // policy compiles to no rule at all (docs/scale.md).
    let agent = node(&hs, "agent", &agent_key).await;
    let (dev_a, dev_b) = tokio::join!(
        node(&hs, "dev-a", &device_key),
        node(&hs, "dev-b", &device_key)
    );

    let seen = peers_until(&agent, "the agent sees both devices", |p| {
        let n = names(p);
        n.contains(&"dev-a") && n.contains(&"dev-b")
    })
    .await;
    assert!(
        seen.iter().all(|p| p.tags == ["tag:portcullis"]),
        "{seen:?}"
    );
    for device in [&dev_a, &dev_b] {
        peers_until(device, "the device sees the agent", |p| {
            names(p) == ["agent"]
        })
        .await;
    }
    // Nor later: updates about the other device never add it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for device in [&dev_a, &dev_b] {
        let peers = device.peers().await.expect("peers");
        assert_eq!(names(&peers), ["agent"], "{}", device.hostname());
    }

    // Traffic, then the path: loopback UDP, not the DERP relay.
    let listener = dev_a.listen(7000).await.expect("listen");
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if c.read_exact(&mut buf).await.is_ok() {
                    let _ = c.write_all(&buf).await;
                }
            });
        }
    });
    let target = SocketAddr::new(dev_a.ips().expect("ips")[0], 7000);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = agent
            .dial(&target.to_string(), Duration::from_secs(10))
            .await
            .expect("dial");
        c.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.expect("echo");
        let peers = agent.peers().await.expect("peers");
        let a = peers
            .iter()
            .find(|p| p.name.starts_with("dev-a."))
            .expect("dev-a among the agent's peers");
        if let Some(direct) = &a.direct {
            let addr: SocketAddr = direct.parse().expect("direct is ip:port");
            assert!(addr.ip().is_loopback(), "{a:?}");
            assert_eq!(a.relay, None, "{a:?}");
            assert!(a.tx_bytes > 0 && a.rx_bytes > 0, "{a:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no direct path to dev-a after 30 s: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for n in [agent, dev_a, dev_b] {
        n.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_does_not_resend_the_key_and_a_forgotten_node_logs_in_again() {
    common::trace();
    let hs = Headscale::start_with_policy(POLICY);
    let admin = hs.create_user("admin");
    let (key_id, key) = key_with_id(&hs, admin, "tag:portcullis");
    let first = node(&hs, "restarts", &key).await;
    let ip = first.ips().expect("ips")[0];
    first.close().await.expect("close");

    // An expired key is refused by headscale if it is sent at all: the
    // restart must use the node key kept in the state dir instead.
    hs.cli(&["preauthkeys", "expire", "--id", &key_id.to_string()]);
    let again = node_builder(&hs, "restarts", &key)
        .up_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap_or_else(|e| panic!("restart with an expired key: {e}\n{}", hs.log()));
    assert_eq!(again.ips().expect("ips")[0], ip, "same node, same address");
    again.close().await.expect("close");

    // The control server forgets the node: the next start logs in again
    // with the (valid) key and comes up as a new node.
    let nodes = hs.cli(&["nodes", "list"]);
    let id = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "restarts"))
        .and_then(|n| n["id"].as_u64())
        .expect("node id");
    hs.cli(&[
        "nodes",
        "delete",
        "--identifier",
        &id.to_string(),
        "--force",
    ]);
    let (_, fresh) = key_with_id(&hs, admin, "tag:portcullis");
    let relogged = node_builder(&hs, "restarts", &fresh)
        .up_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap_or_else(|e| panic!("start after the node was deleted: {e}\n{}", hs.log()));
    assert!(!relogged.ips().expect("ips").is_empty());
    relogged.close().await.expect("close");
}

#[test]
fn review_says_which_peers_devices_see_under_a_tailnet_policy() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("examples/prometheus-readonly.toml");
    let policy = root.join("examples/tailnet-policy.hujson");
    let run = |args: &[&str]| {
        let out = common::connector::run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (c, p) = (
        config.to_str().expect("utf-8"),
        policy.to_str().expect("utf-8"),
    );

    let (code, text) = run(&["review", c, "--tailnet-policy", p, "--strict"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("- `tag:agent`: reaches the devices (grants[0])"),
        "{text}"
    );
    assert!(text.contains("Devices see each other: no."), "{text}");

    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = dir.path().join("mesh.hujson");
    std::fs::write(
        &mesh,
        r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#,
    )
    .expect("write");
    let m = mesh.to_str().expect("utf-8");
    let (code, text) = run(&["review", c, "--tailnet-policy", m, "--strict"]);
    assert_eq!(code, Some(1), "--strict fails on policy warnings: {text}");
    assert!(text.contains("Devices see each other: **yes**."), "{text}");
    assert!(
        text.contains("`tailnet_devices_see_each_other` (acls[0])"),
        "{text}"
    );
    let (code, text) = run(&["review", c, "--tailnet-policy", m, "--format", "json"]);
    assert_eq!(code, Some(0), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["tailnet_policy"]["devices_see_each_other"], true);

    // The demo file tags devices through the key: the tags must be named.
    let demo = root.join("examples/endpoints.toml");
    let d = demo.to_str().expect("utf-8");
    let (code, text) = run(&["review", d, "--tailnet-policy", p]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("pass --device-tag"), "{text}");
    let (code, text) = run(&[
        "review",
        d,
        "--tailnet-policy",
        p,
        "--device-tag",
        "portcullis",
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a tag looks like tag:NAME"), "{text}");
    let (code, text) = run(&[
        "review",
        d,
        "--tailnet-policy",
        p,
        "--device-tag",
        "tag:portcullis",
    ]);
    assert_eq!(code, Some(0), "{text}");

    let broken = dir.path().join("broken.hujson");
    std::fs::write(&broken, "{\"grants\": [ /* unterminated").expect("write");
    let (code, text) = run(&[
        "review",
        c,
        "--tailnet-policy",
        broken.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("invalid tailnet policy"), "{text}");
}
