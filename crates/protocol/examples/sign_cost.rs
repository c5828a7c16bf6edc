//! What a signature costs on this machine, by part: `cargo run --release -p
//! coordinator-protocol --example sign_cost [-- --float]`.
use std::time::Instant;

use protocol::signing::{self, Signer};
use serde_json::json;

fn per(n: u32, f: impl Fn()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    let mut env = json!({
        "header": {"message_id": "0b9e6f3c-3b4e-4a4f-9d0e-7d3c1f1e2a11", "message_type": "testing_completed",
                   "version": "1.7", "timestamp": "2026-12-07T06:00:00.000Z", "correlation_id": "wf-1234567",
                   "source": {"agent_id": "qa-1", "agent_type": "qa-director"},
                   "destination": {"agent_type": "devops-director"}, "priority": "normal", "ttl": 3600},
        "payload": {"data": {"epic_id": "EPIC-1234", "title": "Login with SSO", "coverage": 87,
                              "tests_passed": 412, "tests_failed": 0, "notes": "all green"},
                    "metadata": {}}
    });
    if std::env::args().any(|a| a == "--float") {
        // A float takes the reference library's path.
        env["payload"]["data"]["coverage"] = json!(87.5);
    }
    let body = serde_json::to_vec(&env).unwrap_or_default();
    let key = signing::generate();
    let signer = Signer::new(key.clone(), "k1");
    let n = 20_000;
    let sign_body = per(n, || {
        std::hint::black_box(signer.sign_body(&body));
    });
    let form = signing::signed_form(&env);
    let raw_sign = per(n, || {
        use ed25519_dalek::Signer as _;
        std::hint::black_box(key.sign(&form));
    });
    let parse = per(n, || {
        std::hint::black_box(serde_json::from_slice::<serde_json::Value>(&body).ok());
    });
    let jcs = per(n, || {
        std::hint::black_box(signing::signed_form(&env));
    });
    let clone = per(n, || {
        std::hint::black_box(env.clone());
    });
    let jcs_only = per(n, || {
        std::hint::black_box(signing::jcs(&env));
    });
    let write = per(n, || {
        std::hint::black_box(serde_json::to_vec(&env).ok());
    });
    println!("sign_body {sign_body:.1} µs: ed25519 sign {raw_sign:.1}, parse {parse:.1}, signed form (clone + JCS) {jcs:.1} (clone {clone:.1}, JCS {jcs_only:.1}), write {write:.1}");
}
