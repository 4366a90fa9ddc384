//! How long one thread takes to wake another through a `Condvar` after an
//! idle gap (as the store writer is woken at light load): a ping-pong of
//! 20,000 round trips, each after 200 us of sleep (BENCHMARKS.md, "Where
//! light-load latency goes, again"). Not part of the build:
//!
//!     rustc -O scripts/condvar-wake.rs -o /tmp/condvar-wake && /tmp/condvar-wake
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
fn main() {
    // ping-pong: main sets flag=1 and notifies; the other thread waits for 1, sets 2, notifies.
    let pair = Arc::new((Mutex::new(0u8), Condvar::new()));
    let p2 = pair.clone();
    std::thread::spawn(move || {
        let (m, c) = &*p2;
        loop {
            let mut g = m.lock().unwrap();
            while *g != 1 { g = c.wait(g).unwrap(); }
            *g = 2;
            c.notify_one();
        }
    });
    let (m, c) = &*pair;
    let mut rtts = Vec::new();
    for _ in 0..20000 {
        // idle gap so the other thread parks (as at light load)
        std::thread::sleep(Duration::from_micros(200));
        let t = Instant::now();
        {
            let mut g = m.lock().unwrap();
            *g = 1;
            c.notify_one();
            while *g != 2 { g = c.wait(g).unwrap(); }
        }
        rtts.push(t.elapsed().as_nanos() as u64);
    }
    rtts.sort();
    let p = |q: f64| rtts[((rtts.len() as f64) * q) as usize] / 1000;
    println!("condvar round trip after a 200 us idle gap: p50 {} us, p90 {} us, p99 {} us", p(0.5), p(0.9), p(0.99));
}
