use super::*;

fn tags(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| (*s).to_owned()).collect()
}

fn codes(view: &PeerView) -> Vec<&'static str> {
    view.warnings.iter().map(|w| w.code).collect()
}

#[test]
fn recommended_policy_devices_see_only_agents() {
    let text = include_str!("../../examples/tailnet-policy.hujson");
    let view = analyse("p.hujson", text, &tags(&["tag:portcullis"])).expect("valid");
    assert_eq!(
        view.inbound,
        vec![PeerRule {
            peers: "tag:agent".into(),
            rules: vec!["grants[0]".into()]
        }]
    );
    assert!(view.outbound.is_empty());
    assert!(!view.devices_see_each_other);
    assert!(view.warnings.is_empty(), "{:?}", view.warnings);
}

#[test]
fn a_mesh_is_flagged_three_ways() {
    let text = r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#;
    let view = analyse("p", text, &tags(&["tag:portcullis"])).expect("valid");
    assert!(view.devices_see_each_other);
    assert_eq!(
        codes(&view),
        vec![
            "tailnet_devices_see_each_other",
            "tailnet_devices_reach_out",
            "tailnet_everyone_reaches_devices"
        ]
    );
    assert!(
        view.warnings.iter().all(|w| w.path == "acls[0]"),
        "{:?}",
        view.warnings
    );
}

#[test]
fn acl_ports_are_stripped_and_each_direction_is_named() {
    let text = r#"{
      "acls": [
        {"action": "accept", "src": ["group:sre", "alice@example.com"], "dst": ["tag:db:5432", "tag:portcullis:80,443"]},
        {"action": "accept", "src": ["tag:portcullis"], "dst": ["tag:metrics:9090", "[fd7a:115c:a1e0::1]:80"]},
        {"action": "drop", "src": ["*"], "dst": ["tag:portcullis:*"]},
      ],
    }"#;
    let view = analyse("p", text, &tags(&["tag:portcullis"])).expect("valid");
    let peers = |list: &[PeerRule]| list.iter().map(|r| r.peers.clone()).collect::<Vec<_>>();
    assert_eq!(peers(&view.inbound), ["group:sre", "alice@example.com"]);
    assert_eq!(peers(&view.outbound), ["tag:metrics", "fd7a:115c:a1e0::1"]);
    assert!(!view.devices_see_each_other);
    assert_eq!(
        codes(&view),
        [
            "tailnet_policy_unknown_selector",
            "tailnet_devices_reach_out"
        ]
    );
}

#[test]
fn look_alike_and_prefix_tags_do_not_name_the_devices() {
    for other in [
        "tag:portcullis-db",
        "tag:portcullis ",
        "tag:Portcullis",
        "tag:portcuIlis",
        "tag:portcullis\u{200b}",
        "tag:pоrtcullis", // Cyrillic o
        "tag:portcullis,tag:x",
    ] {
        let text = format!(
            r#"{{"grants": [{{"src": ["tag:agent"], "dst": [{}], "ip": ["*"]}}]}}"#,
            serde_json::to_string(other).expect("json")
        );
        let view = analyse("p", &text, &tags(&["tag:portcullis"])).expect("valid");
        assert!(view.inbound.is_empty(), "{other:?} matched the devices");
        assert_eq!(codes(&view), ["tailnet_devices_unreachable"], "{other:?}");
    }
}

#[test]
fn devices_tagged_twice_match_either_tag_and_groups_never_match() {
    let text = r#"{"grants": [
        {"src": ["tag:agent"], "dst": ["tag:db-dev"], "ip": ["*"]},
        {"src": ["tag:portcullis"], "dst": ["tag:db-dev"], "ip": ["tcp:5432"]},
        {"src": ["group:tag:portcullis"], "dst": ["autogroup:member"], "ip": ["*"]},
    ]}"#;
    let view = analyse("p", text, &tags(&["tag:portcullis", "tag:db-dev"])).expect("valid");
    assert_eq!(view.inbound.len(), 2, "{:?}", view.inbound);
    assert!(view.devices_see_each_other);
    assert_eq!(view.inbound[1].rules, ["grants[1]"]);
}

#[test]
fn malformed_policies_are_errors_naming_the_file_and_rule() {
    for (text, expect) in [
        ("[1, 2]", "p.hujson: a policy file is a JSON object"),
        (r#"{"acls": {}}"#, "p.hujson: `acls` must be a list"),
        (
            r#"{"grants": [{"src": "tag:a", "dst": []}]}"#,
            "p.hujson: grants[0].src must be a list",
        ),
        (
            r#"{"grants": [{"src": [1], "dst": []}]}"#,
            "p.hujson: grants[0].src: entries must be strings",
        ),
        (r#"{"grants": [ // open"#, "p.hujson:"),
    ] {
        let err = analyse("p.hujson", text, &tags(&["tag:portcullis"])).expect_err(text);
        assert!(err.starts_with(expect), "{text}: {err}");
    }
}
