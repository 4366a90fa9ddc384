//! How long one thread takes to wake another through a `Condvar` after an
//! idle gap (as the store writer is woken at light load): a ping-pong of
//! 20,000 round trips, each after 200 µs of sleep (BENCHMARKS.md, "Where
//! light-load latency goes, again"):
//!
//! ```text
//! cargo run --release --example condvar_wake
//! ```

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

fn main() {
    // 1: the main thread asks; 2: the other thread answered.
    let pair = Arc::new((Mutex::new(0u8), Condvar::new()));
    let other = pair.clone();
    std::thread::spawn(move || {
        let (m, c) = &*other;
        loop {
            let mut g = m.lock().unwrap_or_else(PoisonError::into_inner);
            while *g != 1 {
                g = c.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
            *g = 2;
            c.notify_one();
        }
    });
    let (m, c) = &*pair;
    let mut rtts = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        // An idle gap, so that the other thread is parked (as at light load).
        std::thread::sleep(Duration::from_micros(200));
        let t = Instant::now();
        let mut g = m.lock().unwrap_or_else(PoisonError::into_inner);
        *g = 1;
        c.notify_one();
        while *g != 2 {
            g = c.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
        drop(g);
        rtts.push(t.elapsed().as_micros());
    }
    rtts.sort_unstable();
    let p = |q: f64| rtts[(rtts.len() as f64 * q) as usize];
    println!(
        "condvar round trip after a 200 µs idle gap: p50 {} µs, p90 {} µs, p99 {} µs",
        p(0.5),
        p(0.9),
        p(0.99)
    );
}
