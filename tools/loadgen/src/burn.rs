//! `loadgen burn`: spends a steady amount of CPU, in small slices, so that a bench run
//! can be repeated with load that is not the coordinator's. It answers one question
//! about a latency figure: does it move because of what a change does on a message's
//! path, or because the change costs CPU on a machine that is nearly full
//! (docs/performance.md, "What a few percent of CPU does to the peak p99")?

use std::time::{Duration, Instant};

/// Spins `per_second` of CPU every second, spread over `threads` threads in
/// millisecond slices (as per-message work is spread), until the process is killed.
pub fn run(per_second: Duration, threads: u32) -> ! {
    let threads = threads.max(1);
    let slice = per_second / 1000 / threads;
    for _ in 1..threads {
        std::thread::spawn(move || spin_every_millisecond(slice));
    }
    spin_every_millisecond(slice)
}

fn spin_every_millisecond(slice: Duration) -> ! {
    let tick = Duration::from_millis(1);
    let mut next = Instant::now();
    loop {
        let started = Instant::now();
        while started.elapsed() < slice {
            std::hint::spin_loop();
        }
        next += tick;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Fell behind (the machine was busy): start again from now rather than
            // catching up in a burst.
            next = now;
        }
    }
}
