//! Scan-cost measurements on large and adversarial inputs. These print and
//! never assert on time; run them with
//! `cargo test --release --lib inspect::perf_tests -- --ignored --nocapture`.

use serde_json::{Value, json};

use super::*;

fn jwt() -> String {
    super::tests::jwt()
}

/// Not a timed assertion: prints how long a ~1 MiB document takes, for the
/// linear-cost note. Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn scan_one_mebibyte() {
    let row = json!({"id": "3b241101-e2bb-4255-8caf-4136c566a962", "sha": "9fceb02d0ae598e95dc970b74767f19372d61af8",
        "note": "ordinary text with a url https://example.com/a?b=c and numbers 12345", "n": 1});
    let rows: Vec<Value> = std::iter::repeat_n(row, 5000).collect();
    let mut doc = json!({ "rows": rows, "tail": format!("password=hunter2 {}", jwt()) });
    let bytes = serde_json::to_string(&doc).unwrap_or_default().len();
    let t = std::time::Instant::now();
    let found = scan_json(&doc).len();
    let scan = t.elapsed();
    let t = std::time::Instant::now();
    apply(&mut doc, SecretAction::Redact);
    let redact = t.elapsed();
    let text = serde_json::to_string(&doc).unwrap_or_default();
    let t = std::time::Instant::now();
    let text_found = scan_text(&text).len() + scan_injection_text(&text).len();
    println!(
        "{bytes} bytes: scan_json {scan:?} ({found} findings), apply(Redact) {redact:?}, scan_text+injection on redacted {:?} ({text_found})",
        t.elapsed()
    );
}

/// Not a timed assertion: prints scan times for adversarial 1 MiB inputs.
/// Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn adversarial_inputs() {
    let cases: Vec<(&str, String)> = vec![
        ("letters", "a".repeat(1 << 20)),
        ("password= x", "password=x ".repeat(1 << 20 >> 4)),
        (
            "password=hunter2 ",
            "password=hunter2 ".repeat(1 << 20 >> 4),
        ),
        ("AKIA", "AKIA".repeat(1 << 18)),
        ("ey dotted", format!("ey{}", "Abcdefghij.".repeat(1 << 16))),
        ("jwt-ish", "eyJhbGciOiJIUzI1NiJ9.e30.x ".repeat(1 << 15)),
        ("begin", "-----BEGIN PRIVATE KEY-----".repeat(1 << 15)),
        ("url", format!("http://{}", "a:".repeat(1 << 19))),
        ("colons", "a:b@".repeat(1 << 18)),
        ("zero-width", "\u{200B}".repeat(1 << 18)),
        ("ignore", "ignore all all all ".repeat(1 << 15)),
        ("send the", "send the x ".repeat(1 << 16)),
    ];
    for (name, text) in cases {
        let t = std::time::Instant::now();
        let n = scan_text(&text).len();
        let secrets = t.elapsed();
        let t = std::time::Instant::now();
        let m = scan_injection_text(&text).len();
        let mut s = text.clone();
        let t2 = std::time::Instant::now();
        apply_text(&mut s, SecretAction::Redact);
        println!(
            "{name:>18} {:>8} B: secrets {secrets:?} ({n}), injection {:?} ({m}), redact {:?}",
            text.len(),
            t.elapsed(),
            t2.elapsed()
        );
    }
}
