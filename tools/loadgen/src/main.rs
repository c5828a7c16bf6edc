//! `loadgen`: drives a coordinator the way agents do and measures it. `make bench` runs
//! `loadgen bench`; `make bench-quick` runs `loadgen bench --quick`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use coordinator::settings::QueueType;
use loadgen::{bench, burn, ceiling, echo, envelope_bytes, soak};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Load generator and benchmark suite for the coordinator (see docs/performance.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the benchmark suite: the broker's ceiling, then every run on a fresh database and vhost
    Bench {
        /// 15-second windows instead of 60
        #[arg(long)]
        quick: bool,
        /// Settings profiles to run (default = config/default.toml, production = + config/production.toml,
        /// production-open = production with the security mechanisms off, to show their cost,
        /// production-traced = production exporting spans over OTLP, to show what tracing costs)
        #[arg(long = "profile", value_parser = ["default", "production", "production-open", "production-traced"], default_values_t = ["default".to_string(), "production".to_string(), "production-open".to_string(), "production-traced".to_string()])]
        profiles: Vec<String>,
        /// Only the named runs (normal, peak, stress, closed-200, peak+timers, big+peak+timers)
        #[arg(long)]
        only: Vec<String>,
        /// Measurement window of each run (overrides --quick)
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Option<Duration>,
        /// The coordinator binary to start
        #[arg(long, default_value = "target/release/coordinator")]
        bin: PathBuf,
        /// The configuration folder the coordinator reads
        #[arg(long, default_value = "config")]
        config_dir: PathBuf,
        /// Where the report and the coordinator logs are written
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Clocks of the timer workload (due within 10 s)
        #[arg(long, default_value_t = 15_000)]
        timer_clocks: i64,
        /// Active workflows preloaded for the big-tables run
        #[arg(long, default_value_t = 100_000)]
        big_workflows: i64,
        /// Armed clocks preloaded for the big-tables run
        #[arg(long, default_value_t = 1_000_000)]
        big_clocks: i64,
        /// Agents per role in every run, instead of each scenario's own count (10, 50
        /// or 100 agents: 2, 10 or 20 per role); 1 is the lightest load on the broker
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=100))]
        agents_per_role: Option<u16>,
        /// Do not drive each load through the echo too (no ratios to it in the report)
        #[arg(long)]
        no_echo: bool,
    },
    /// The echo the bench runs beside the coordinator: the inbox consumed and every task
    /// the workflows send published, from state kept in memory (no database, no security):
    /// the machine's ceiling for the workload. Reads the coordinator's settings, as
    /// `coordinator serve` does (COORDINATOR_CONFIG_DIR, COORDINATOR_ENV, COORDINATOR__…)
    Echo,
    /// A steady load through the happy path with one fault a minute (coordinator SIGKILL,
    /// sessions terminated, PostgreSQL stopped, coordinator SIGTERM, RabbitMQ stopped),
    /// reporting messages lost, applied twice, latency per minute and memory. It runs on a
    /// PostgreSQL cluster and a RabbitMQ node of its own, started from the installed
    /// packages on spare ports, so the machine's are never stopped
    Soak {
        /// How long the load runs (one fault a minute from the second minute)
        #[arg(long, env = "SOAK_MINUTES", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        minutes: u64,
        /// Agent messages per second offered (11 per workflow)
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// How long PostgreSQL or RabbitMQ stays down in its fault
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        outage: Duration,
        /// No faults: one coordinator process for the whole run, to watch its memory
        #[arg(long, env = "SOAK_NO_FAULTS", value_parser = clap::builder::FalseyValueParser::new())]
        no_faults: bool,
        /// The coordinator binary to start
        #[arg(long, default_value = "target/release/coordinator")]
        bin: PathBuf,
        /// The configuration folder the coordinator reads
        #[arg(long, default_value = "config")]
        config_dir: PathBuf,
        /// Where the report (soak.md) and the coordinator logs are written
        #[arg(long, default_value = "target/soak")]
        out: PathBuf,
    },
    /// Measure only the broker's ceiling: persistent publish with confirms → consume → ack through one queue
    Ceiling {
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp: String,
        #[arg(long, value_parser = ["classic", "quorum"], default_value = "classic")]
        queue_type: String,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        duration: Duration,
    },
    /// Spend CPU at a steady rate until killed (in millisecond slices on each thread), to
    /// see how a bench run responds to load that is not the coordinator's
    Burn {
        /// CPU time spent each second, over all threads (60ms = 6% of one core)
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60ms")]
        per_second: Duration,
        /// Threads the time is spread over
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
        threads: u32,
    },
}

/// The coordinator binary a run starts must exist: exit 2, saying how to build it.
fn built(bin: &std::path::Path) -> Result<(), ExitCode> {
    if bin.is_file() {
        return Ok(());
    }
    eprintln!(
        "error: {} does not exist: build it with `cargo build --release`",
        bin.display()
    );
    Err(ExitCode::from(2))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench {
            quick,
            profiles,
            only,
            window,
            bin,
            config_dir,
            out,
            timer_clocks,
            big_workflows,
            big_clocks,
            agents_per_role,
            no_echo,
        } => {
            if let Err(code) = built(&bin) {
                return code;
            }
            let window = window.unwrap_or(Duration::from_secs(if quick { 15 } else { 60 }));
            let opts = bench::Options {
                bin,
                config_dir,
                profiles,
                only,
                warmup: Duration::from_secs(if quick { 3 } else { 5 }),
                window,
                timer_clocks,
                big_workflows,
                big_clocks,
                agents_per_role: agents_per_role.map(usize::from),
                out_dir: out,
                echo: !no_echo,
            };
            bench::run(&opts).await.map(|_| ())
        }
        Command::Echo => match coordinator::settings::Settings::load() {
            Ok(settings) => echo::serve(&settings).await,
            Err(e) => {
                Err(anyhow::Error::from(e).context("the echo reads the coordinator's settings"))
            }
        },
        Command::Soak {
            minutes,
            rate,
            outage,
            no_faults,
            bin,
            config_dir,
            out,
        } => {
            if let Err(code) = built(&bin) {
                return code;
            }
            let opts = soak::Options {
                bin,
                config_dir,
                out_dir: out,
                minutes,
                rate,
                outage,
                faults: !no_faults,
                drain: Duration::from_secs(120),
            };
            match soak::run(&opts).await {
                Ok(report) if report.ok() => Ok(()),
                Ok(report) => Err(anyhow::anyhow!(
                    "the soak lost {} workflows, applied {} messages twice and left {} irregular histories (where everything was: {})",
                    report.outcome.lost,
                    report.outcome.applied_twice,
                    report.outcome.irregular,
                    opts.out_dir.join("failure.md").display()
                )),
                Err(e) => Err(e),
            }
        }
        Command::Ceiling {
            amqp,
            queue_type,
            duration,
        } => {
            let qt = if queue_type == "quorum" {
                QueueType::Quorum
            } else {
                QueueType::Classic
            };
            ceiling::measure(&amqp, qt, envelope_bytes(), duration)
                .await
                .map(|r| println!("{r:.0} msg/s"))
                .map_err(anyhow::Error::from)
        }
        Command::Burn {
            per_second,
            threads,
        } => {
            if per_second >= Duration::from_secs(u64::from(threads)) {
                eprintln!(
                    "error: --per-second {} is more than {threads} thread(s) can spend in a second",
                    humantime::format_duration(per_second)
                );
                return ExitCode::from(2);
            }
            burn::run(per_second, threads)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
