use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use coordinator::app::App;
use coordinator::cli::{self, Cli, Command};
use coordinator::settings::Settings;
use coordinator::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve);
    let connects = cli.command.connects();
    let ready = |s: Settings| {
        if connects {
            s.ready_to_start()?;
        }
        if serving {
            s.ready_to_serve()?;
        }
        Ok(s)
    };
    let settings = match Settings::load().and_then(ready) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", telemetry::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    let result = match cli.command {
        Command::Serve => serve(settings).await.map(|()| String::new()),
        command => cli::run(&settings, command).await,
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", telemetry::error_chain(e.as_ref()));
            if cli::is_usage(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    // Fail points named in FAILPOINTS (test builds only; see src/failpoint.rs).
    let _fail_points = coordinator::failpoint::setup();
    let shutdown = CancellationToken::new();
    let timeout = settings.shutdown.timeout;
    let app = App::build(settings).await?;
    let shared = app.shared();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: stopping consumption, finishing in-flight work, flushing the outbox");
        signal.cancel();
    });
    // A supervisor's grace period ends in SIGKILL, which says nothing: overrunning ours
    // exits with the step it was stuck at instead.
    let overrun = async {
        shutdown.cancelled().await;
        tokio::time::sleep(timeout).await;
    };
    let result = tokio::select! {
        r = app.run(shutdown.clone()) => r,
        () = overrun => return Err(anyhow::anyhow!(
            "shutdown did not finish within shutdown.timeout ({}); it was {}. What was committed is kept; messages not yet sent go out after a restart",
            humantime::format_duration(timeout),
            shared.stopping_at()
        )),
    };
    // Each session closed with PostgreSQL's goodbye, not dropped at exit.
    shared.stopping("closing the database connections");
    coordinator::db::close(&shared.pool).await;
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
