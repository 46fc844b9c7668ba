//! Property tests for the glob and identity matchers.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::matches;
use crate::config::{Glob, Identity};
use crate::identity::Caller;

fn segment() -> impl Strategy<Value = String> {
    "[a-z0-9_-][a-z0-9_.-]{0,7}"
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 1..5).prop_map(|s| format!("/{}", s.join("/")))
}

proptest! {
    #[test]
    fn literal_matches_only_itself(p in path(), q in path()) {
        let g = Glob::path(&p).expect("literal path");
        prop_assert!(g.matches(&p));
        prop_assert_eq!(g.matches(&q), p == q);
    }

    #[test]
    fn star_never_crosses_slash(prefix in path(), rest in prop::collection::vec(segment(), 1..4)) {
        let g = Glob::path(&format!("{prefix}/*")).expect("glob");
        let input = format!("{prefix}/{}", rest.join("/"));
        prop_assert_eq!(g.matches(&input), rest.len() == 1);
    }

    #[test]
    fn double_star_matches_any_suffix(prefix in path(), rest in prop::collection::vec(segment(), 0..4)) {
        let g = Glob::path(&format!("{prefix}/**")).expect("glob");
        let input = format!("{prefix}/{}", rest.join("/"));
        prop_assert!(g.matches(&input));
        prop_assert!(!g.matches(&prefix), "the directory itself is not below it");
    }

    #[test]
    fn star_in_name_matches_prefixes(prefix in "[a-z_]{0,6}", rest in "[a-z_]{0,6}", other in "[a-z_]{1,12}") {
        let g = Glob::name(&format!("{prefix}*")).expect("glob");
        let input = format!("{prefix}{rest}");
        prop_assert!(g.matches(&input));
        prop_assert_eq!(g.matches(&other), other.starts_with(&prefix));
    }

    #[test]
    fn matching_is_total_on_arbitrary_input(pattern in "[a-z*/]{0,12}", input in "\\PC{0,40}") {
        if let Ok(g) = Glob::name(&pattern) {
            let _ = g.matches(&input);
        }
    }

    #[test]
    fn user_match_ignores_case_only(login in "[a-z]{1,8}@[a-z]{1,8}\\.com", other in "[a-z]{1,8}@[a-z]{1,8}\\.com") {
        let caller = Caller {
            addr: "100.64.0.1:1".parse().expect("addr"),
            node_id: "n1".into(),
            node: "box.tail.ts.net".into(),
            user: Some(login.to_uppercase()),
            tags: vec![],
            capabilities: BTreeMap::new(),
        };
        prop_assert!(matches(&Identity::User(login.clone()), &caller));
        prop_assert_eq!(matches(&Identity::User(other.clone()), &caller), other == login);
        let tag = Identity::Tag(format!("tag:{login}"));
        prop_assert!(!matches(&tag, &caller));
    }

    #[test]
    fn group_matches_iff_a_member_does(tags in prop::collection::vec("tag:[a-z]{1,4}", 0..4), probe in "tag:[a-z]{1,4}") {
        let caller = Caller {
            addr: "100.64.0.1:1".parse().expect("addr"),
            node_id: "n1".into(),
            node: "box".into(),
            user: None,
            tags: vec![probe.clone()],
            capabilities: BTreeMap::new(),
        };
        let group = Identity::Group {
            name: "g".into(),
            members: tags.iter().cloned().map(Identity::Tag).collect(),
        };
        prop_assert_eq!(matches(&group, &caller), tags.contains(&probe));
    }
}
