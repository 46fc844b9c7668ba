//! The audit gate on the request path, and checkpoint signing.
//!
//! `cargo bench --bench audit` prints, in one run:
//!
//! - the cost per request of recording it with the gate (reserve the
//!   record's place when the guard is made, `admit()`, write on drop) and
//!   without (the record enqueued when the work ends, as before the gate),
//!   p50 and p99, and their ratio; a SQLite writer drains the queue
//!   meanwhile, as in `run`;
//! - checkpoint signing and verification rates (Ed25519 signed notes).

use std::time::{Duration, Instant};

use portcullis::audit::{AuditGuard, AuditLog, ChainHead, Checkpointer, Kind, Record, checkpoint};

const N: usize = 100_000;

fn record(i: usize) -> Record {
    let mut r = Record::new(Kind::HttpRequest);
    r.endpoint = Some("web".to_owned());
    r.method = Some("GET".to_owned());
    r.path = Some(format!("/page/{}", i % 100));
    r.status = Some("200".to_owned());
    r.latency_us = Some((i % 5000) as u64);
    r
}

fn percentiles(mut ns: Vec<u64>) -> (u64, u64) {
    ns.sort_unstable();
    (ns[ns.len() / 2], ns[ns.len() * 99 / 100])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let (log, writer) = AuditLog::open(&url, "bench", 1 << 20).await.expect("audit");

    // Interleaved rounds so both paths see the same writer load and caches.
    let mut with = Vec::with_capacity(N);
    let mut without = Vec::with_capacity(N);
    for round in 0..10 {
        for i in 0..N / 10 {
            let r = record(round * N + i);
            let t = Instant::now();
            let guard = AuditGuard::new(&log, r);
            assert!(guard.admit().is_ok(), "gate refused on a healthy store");
            drop(guard);
            with.push(t.elapsed().as_nanos() as u64);
        }
        log.flush().await.expect("flush");
        for i in 0..N / 10 {
            let r = record(round * N + i);
            let t = Instant::now();
            log.record(r);
            without.push(t.elapsed().as_nanos() as u64);
        }
        log.flush().await.expect("flush");
    }
    assert_eq!(log.dropped_total(), 0);
    let (with50, with99) = percentiles(with);
    let (without50, without99) = percentiles(without);
    println!("audit gate on the request path ({N} requests each, SQLite writer draining):");
    println!(
        "  without gate (enqueue at the end)      p50 {without50:>6} ns   p99 {without99:>6} ns"
    );
    println!("  with gate (reserve + admit + write)    p50 {with50:>6} ns   p99 {with99:>6} ns");
    println!(
        "  gate cost p50: {} ns per request ({:.2}x)",
        with50.saturating_sub(without50),
        with50 as f64 / without50.max(1) as f64
    );
    log.shutdown().await.expect("shutdown");
    writer.await.expect("writer").expect("writer result");

    // Signing: one checkpoint per call, as the writer makes them.
    let signer = Checkpointer::load_or_create(dir.path(), "bench").expect("key");
    let vkey = std::fs::read_to_string(dir.path().join(checkpoint::PUBLIC_KEY_FILE)).expect("vkey");
    let head = ChainHead {
        seq: 123_456,
        hash: "ab".repeat(32),
    };
    let mut notes = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        notes.push(signer.sign_note("bench", &head).expect("sign"));
    }
    let signed_per_s = notes.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for note in &notes {
        let cp = checkpoint::parse(note, Some(&vkey)).expect("verify");
        assert!(cp.signature_checked);
    }
    let verified_per_s = notes.len() as f64 / t.elapsed().as_secs_f64();
    println!("checkpoints (Ed25519 signed notes):");
    println!(
        "  signed   {signed_per_s:>9.0} /s ({:.1} us each)",
        1e6 / signed_per_s
    );
    println!(
        "  verified {verified_per_s:>9.0} /s ({:.1} us each)",
        1e6 / verified_per_s
    );
    println!(
        "  at one checkpoint per {} s, signing costs {:.5}% of one core",
        checkpoint::DEFAULT_INTERVAL.as_secs(),
        100.0 / signed_per_s / checkpoint::DEFAULT_INTERVAL.as_secs_f64()
    );
}
