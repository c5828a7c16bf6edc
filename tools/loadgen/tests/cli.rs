//! The load generator's command line refuses what it cannot do, saying why.

use std::process::Command;

#[test]
fn burn_refuses_more_cpu_than_its_threads_have() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["burn", "--per-second", "3s", "--threads", "2"])
        .output()
        .expect("loadgen runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--per-second 3s is more than 2 thread(s) can spend in a second"),
        "{stderr}"
    );
}

#[test]
fn burn_names_a_bad_duration() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["burn", "--per-second", "sixty"])
        .output()
        .expect("loadgen runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--per-second"), "{stderr}");
}
