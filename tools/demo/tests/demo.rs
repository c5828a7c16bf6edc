//! `make demo` is the first thing a new user runs: it must keep working. Runs the demo
//! binary under its own database and vhost name and checks the story it tells.

use std::process::Command;

#[test]
fn the_demo_runs_its_five_scenarios_and_prints_the_manager_summary() {
    let name = format!("coordinator_demo_test_{}", uuid::Uuid::new_v4().simple());
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .env("DEMO_NAME", &name)
        .env_remove("RUST_LOG")
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // Clean up what the demo deliberately keeps.
    let _ = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
        .arg(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .output();
    let _ = Command::new("rabbitmqctl")
        .args(["delete_vhost", &name])
        .output();

    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for want in [
        "qa-1         ⚠ sla_warning",
        "[escalation.high.qa-director] testing_start, qa-1: level 1 → qa-director (high)",
        "[escalation.high.oncall] testing_start, qa-1: level 2 → oncall (high)",
        "the ladder stops",
        "bug_report",
        "round 2",
        "creative-1   ← design_request",
        "eng-1        ← design_assets",
        "product-1    ← design_delivered",
        "design_handoff",
        "marketing-1  → campaign_launched",
        "wf-101.launch_handoff",
        "[fanout] \"Payments API down\"",
        "acknowledgment, marketing-1: level 1 → marketing-director (critical)",
        "What a manager sees in SQL",
        "wf-102",
        "inc-7",
        "pat (on-call)",
    ] {
        assert!(
            stdout.contains(want),
            "the demo's output lacks {want:?}:\n{stdout}"
        );
    }
}
