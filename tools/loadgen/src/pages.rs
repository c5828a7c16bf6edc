//! The read API's and the dashboard's pages timed while a run's load goes on: one
//! request at a time, round the list, for the measurement window. The target (issue
//! 34): under 100 ms at p99 with 100,000 workflows in the database while the peak
//! scenario runs (`big+peak+timers`).

use std::time::{Duration, Instant};

use crate::stats::Percentiles;

/// What is timed: the dashboard's two pages and the API's list and detail pages over
/// the preloaded workflows (`old-1` is one of them). The report (a scan of the window's
/// rows) is timed apart: it is not a page a dashboard polls.
pub const PAGES: &[&str] = &[
    "/",
    "/workflows/old-1",
    "/api/v1/workflows?limit=50",
    "/api/v1/workflows?state=testing&limit=50",
    "/api/v1/workflows?role=qa-director&limit=50",
    "/api/v1/workflows?overdue=true&limit=50",
    "/api/v1/workflows/old-1",
    "/api/v1/escalations?open=true",
    "/api/v1/emergencies",
    "/api/v1/agents",
    "/api/v1/dead-letters?limit=50",
];

/// Each page's latencies (µs), and the answers that were not 200.
#[derive(Debug, Clone, Default)]
pub struct PageTimes {
    pub by_page: Vec<(&'static str, Vec<u32>)>,
    pub failures: Vec<String>,
}

impl PageTimes {
    /// Every page together.
    pub fn all(&self) -> Percentiles {
        Percentiles::of(
            self.by_page
                .iter()
                .flat_map(|(_, l)| l.iter().copied())
                .collect(),
        )
    }

    /// Each page with its latencies' percentiles.
    pub fn each(&self) -> impl Iterator<Item = (&'static str, Percentiles)> + '_ {
        self.by_page
            .iter()
            .map(|(p, l)| (*p, Percentiles::of(l.clone())))
    }

    /// The page with the highest p99, and that p99.
    pub fn slowest(&self) -> Option<(&'static str, Percentiles)> {
        self.each().max_by(|a, b| a.1.p99.total_cmp(&b.1.p99))
    }
}

/// Times [`PAGES`] on `http` (host:port), one request every `every`, until `until`.
pub async fn time_pages(http: String, until: Instant, every: Duration) -> PageTimes {
    let mut times = PageTimes {
        by_page: PAGES.iter().map(|p| (*p, Vec::new())).collect(),
        failures: Vec::new(),
    };
    let mut i = 0;
    while Instant::now() < until {
        let page = PAGES[i % PAGES.len()];
        let started = Instant::now();
        let answer = agent::probe(&http, page).await;
        let took = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        match answer {
            Some((200, _)) => times.by_page[i % PAGES.len()].1.push(took),
            Some((status, body)) => times.failures.push(format!(
                "{page}: {status} {}",
                body.chars().take(200).collect::<String>()
            )),
            None => times.failures.push(format!("{page}: no answer")),
        }
        i += 1;
        tokio::time::sleep(every).await;
    }
    times
}

/// The report over the window's rows, timed `n` times (an answer other than 200 is
/// said on stdout and not timed).
pub async fn time_report(http: &str, n: usize) -> Percentiles {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        match agent::probe(http, "/api/v1/report?since=1h").await {
            Some((200, _)) => {
                took.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX))
            }
            Some((status, body)) => println!(
                "GET /api/v1/report?since=1h answered {status}: {}",
                body.chars().take(300).collect::<String>()
            ),
            None => println!("GET /api/v1/report?since=1h: no answer"),
        }
    }
    Percentiles::of(took)
}
