//! The production trial of docs/scaling.md, run as written: the shell block marked
//! `production-trial` makes a vhost and a database, sets production's settings (and
//! what production needs besides: plaintext allowed on loopback, a signing key made for
//! the trial), migrates and starts two coordinators. Both must become ready. Only the
//! names are changed (a vhost, a database and ports of the test's own, this build's
//! binary), so the test never touches what a person made by following the page.

use std::os::unix::process::CommandExt;
use std::process::Command;

use test_support::{coordinator_bin, eventually, http_get, repo_root};

/// The shell block after the marker.
fn documented_steps() -> String {
    let page = std::fs::read_to_string(repo_root().join("docs/scaling.md")).expect("scaling.md");
    let after = page
        .split_once("<!-- production-trial")
        .map(|(_, rest)| rest)
        .expect("docs/scaling.md marks its production trial");
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .expect("a ```sh block after the marker");
    block.to_string()
}

/// The vhost and database of the run, dropped when it ends (also on a failure), and the
/// coordinators' process group killed.
struct Trial {
    name: String,
    group: Option<i32>,
}

impl Drop for Trial {
    fn drop(&mut self) {
        if let Some(pgid) = self.group {
            // `--` before the group: Debian 12's procps-ng kill (4.0.2) reads
            // `kill -KILL -12345` as `kill -KILL -1`, every process the user may signal
            // (the database, the broker and the test runner with them).
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pgid}")])
                .status();
        }
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .output();
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_production_trial_runs_as_written() {
    let steps = documented_steps();
    for needed in [
        "COORDINATOR_ENV=production",
        "key generate",
        "coordinator migrate",
        "coordinator serve &",
    ] {
        assert!(
            steps.contains(needed),
            "the steps lost {needed:?}:\n{steps}"
        );
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut trial = Trial {
        name: format!("coord_trial_{}", &id[..12]),
        group: None,
    };
    let ports = [
        test_support::isolated::free_port(),
        test_support::isolated::free_port(),
    ];
    let script = steps
        .replace("coordinator-prod", &trial.name)
        .replace("coordinator_prod", &trial.name)
        .replace(
            "target/release/coordinator",
            &coordinator_bin().display().to_string(),
        )
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{}", ports[0]))
        .replace("127.0.0.1:8082", &format!("127.0.0.1:{}", ports[1]));
    let out_dir = std::env::temp_dir().join(format!("coordinator-trial-{id}"));
    std::fs::create_dir_all(&out_dir).expect("a scratch folder");
    let log = std::fs::File::create(out_dir.join("trial.log")).expect("log file");
    let status = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env_remove("RUST_LOG")
        .env_remove("COORDINATOR_CONFIG_DIR")
        .current_dir(&out_dir)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .inspect(|child| trial.group = i32::try_from(child.id()).ok())
        .and_then(|mut child| child.wait())
        .expect("bash runs the steps");
    let logged = || std::fs::read_to_string(out_dir.join("trial.log")).unwrap_or_default();
    assert!(status.success(), "the steps failed:\n{}", logged());
    for port in ports {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        eventually(
            &format!("the coordinator on :{port} to be ready"),
            || async { (http_get(addr, "/readyz").await.map(|r| r.0) == Some(200)).then_some(()) },
        )
        .await;
    }
    // Production's settings said what they allowed (before the coordinator was ready).
    let text = logged();
    assert!(
        text.contains("security.allow_plaintext is true in production"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}
