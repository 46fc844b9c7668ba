//! Unit tests of the pure chain functions.

use super::chain::{self, ChainHead, GENESIS, Problem, Row, Verifier, verify_rows};
use super::record::{Finding, FindingAction, Kind, Record};
use super::test_support::{caller, sample};
use super::time_fmt;

fn rows(n: usize) -> Vec<Row> {
    let mut head = ChainHead::genesis();
    (0..n)
        .map(|i| {
            let mut r = sample(i);
            r.connector = "c1".to_owned();
            r.time = Some(time_fmt::parse("2025-01-02T03:04:05.123456Z").unwrap());
            head.append(&r).unwrap()
        })
        .collect()
}

fn first_bad(rows: &[Row]) -> (u64, Problem) {
    let bad = verify_rows("c1", rows).unwrap_err();
    (bad.seq, bad.problem)
}

#[test]
fn canonical_body_has_fixed_field_order() {
    let mut r = Record::connection_denied(
        &caller(Some("alice@example.com"), "laptop", &["tag:x"]),
        "db",
        "pg",
        "no_matching_rule",
        "nobody may",
    );
    r.time = Some(time_fmt::parse("2025-01-02T03:04:05.000007Z").unwrap());
    r.connector = "c1".to_owned();
    r.fingerprint = "fp".to_owned();
    let body = chain::canonical_body(42, &r).unwrap();
    assert_eq!(
        body,
        concat!(
            r#"{"seq":42,"kind":"connection_denied","time":"2025-01-02T03:04:05.000007Z","#,
            r#""connector":"c1","fingerprint":"fp","caller":{"node":"laptop","node_id":"n6","#,
            r#""user":"alice@example.com","tags":["tag:x"],"addr":"100.64.0.7:41234"},"#,
            r#""device":"db","endpoint":"pg","decision":"deny","reason":"no_matching_rule","#,
            r#""detail":"nobody may"}"#
        )
    );
    let (seq, back) = chain::parse_body(&body).unwrap();
    assert_eq!((seq, back), (42, r));
}

#[test]
fn genesis_and_links() {
    let rows = rows(3);
    assert_eq!(rows[0].prev_hash, GENESIS);
    assert_eq!(GENESIS.len(), 64);
    assert_eq!(rows[1].prev_hash, rows[0].hash);
    assert_eq!(rows[0].hash, chain::link_hash(GENESIS, &rows[0].body));
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let head = verify_rows("c1", &rows).unwrap();
    assert_eq!((head.seq, head.hash.as_str()), (3, rows[2].hash.as_str()));
}

#[test]
fn empty_chain_verifies() {
    assert_eq!(verify_rows("c1", &[]).unwrap(), ChainHead::genesis());
}

#[test]
fn edited_body_is_a_hash_mismatch() {
    let mut rows = rows(10);
    rows[5].body = rows[5].body.replace("create_issue", "delete_repo");
    assert_eq!(first_bad(&rows), (6, Problem::HashMismatch));
}

#[test]
fn edited_body_with_recomputed_hash_breaks_the_next_link() {
    let mut rows = rows(10);
    rows[5].body = rows[5].body.replace("create_issue", "delete_repo");
    rows[5].hash = chain::link_hash(&rows[5].prev_hash, &rows[5].body);
    assert_eq!(first_bad(&rows), (7, Problem::PrevHashMismatch));
}

#[test]
fn edited_column_is_a_column_mismatch() {
    let mut rows = rows(10);
    rows[2].decision = Some("permit".to_owned());
    assert_eq!(
        first_bad(&rows),
        (
            3,
            Problem::ColumnMismatch {
                column: "decision".to_owned()
            }
        )
    );
    let mut rows = self::rows(10);
    rows[7].caller = Some("mallory".to_owned());
    assert_eq!(
        first_bad(&rows),
        (
            8,
            Problem::ColumnMismatch {
                column: "caller".to_owned()
            }
        )
    );
}

#[test]
fn deleted_row_is_missing() {
    let mut rows = rows(10);
    rows.remove(3);
    assert_eq!(first_bad(&rows), (4, Problem::Missing { found: 5 }));
    let mut rows = self::rows(3);
    rows.remove(0);
    assert_eq!(first_bad(&rows), (1, Problem::Missing { found: 2 }));
}

#[test]
fn renumbered_rows_are_caught() {
    // Two rows swapped by editing their seq columns: read in seq order, the
    // moved body no longer links to its predecessor.
    let mut rows = rows(6);
    rows.swap(2, 3);
    rows[2].seq = 3;
    rows[3].seq = 4;
    assert_eq!(first_bad(&rows), (3, Problem::PrevHashMismatch));
    // A row deleted and the rest renumbered down to close the gap.
    let mut rows = self::rows(6);
    rows.remove(2);
    for (i, row) in rows.iter_mut().enumerate() {
        row.seq = i as u64 + 1;
    }
    assert_eq!(first_bad(&rows), (3, Problem::PrevHashMismatch));
}

#[test]
fn body_seq_must_match_row_seq() {
    let mut head = ChainHead::genesis();
    let mut r = sample(0);
    r.connector = "c1".to_owned();
    r.time = Some(time_fmt::now());
    let mut row = head.append(&r).unwrap();
    // A forged row whose hash is consistent but whose body claims seq 9.
    row.body = chain::canonical_body(9, &r).unwrap();
    row.hash = chain::link_hash(GENESIS, &row.body);
    let bad = Verifier::new("c1").check(&row).unwrap_err();
    assert_eq!(bad.problem, Problem::SeqMismatch { body_seq: 9 });
}

#[test]
fn garbage_body_is_reported() {
    let mut rows = rows(2);
    rows[1].body = "not json".to_owned();
    rows[1].hash = chain::link_hash(&rows[1].prev_hash, &rows[1].body);
    assert!(matches!(first_bad(&rows), (2, Problem::BadBody { .. })));
}

#[test]
fn problems_render_for_humans() {
    let mut rows = rows(3);
    rows.remove(1);
    let bad = verify_rows("c1", &rows).unwrap_err();
    assert_eq!(
        bad.to_string(),
        "c1 seq 2: record missing (deleted?): next stored record is 3"
    );
}

#[test]
fn kinds_round_trip_through_their_names() {
    for kind in Kind::ALL {
        assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
    }
    assert_eq!(Kind::parse("nope"), None);
}

#[test]
fn findings_carry_no_values() {
    let f = Finding::new("aws_access_key", "/arguments/env/0", FindingAction::Blocked);
    let json = serde_json::to_value(&f).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"kind": "aws_access_key", "location": "/arguments/env/0", "action": "blocked"})
    );
}

#[test]
fn http_request_drops_query_string() {
    let c = caller(Some("a@b"), "n", &[]);
    let r = Record::http_request(&c, "wiki", "GET", "/search?token=secret");
    assert_eq!(r.path.as_deref(), Some("/search"));
}
