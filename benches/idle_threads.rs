//! Leak-scan time beside many idle threads: every checkpoint report stops
//! each of them, scans its stack, and tells the threads that stopped from
//! those that did not.
//!
//! ```sh
//! cargo bench --bench idle_threads            # 4,000 threads
//! cargo bench --bench idle_threads -- 12000   # (past the stop table's 4,096)
//! ```
//!
//! It spawns the threads (64 KiB stacks, each holding one box, all parked
//! on a barrier), then times `memwarden::checkpoint()` + `leaks()` five
//! times and prints each time and the median.
#![allow(missing_docs)]

#[global_allocator]
static GLOBAL: memwarden::Warden = memwarden::Warden::new();

#[cfg(all(feature = "tracking", target_os = "linux"))]
fn run(threads: usize) {
    use std::sync::{Arc, Barrier};
    use std::time::Instant;

    let done = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let done = Arc::clone(&done);
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    let held = Box::new(i);
                    done.wait();
                    drop(held);
                })
                .expect("spawn")
        })
        .collect();
    // Let them all reach the barrier (and block in the kernel).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let report = memwarden::checkpoint().leaks();
            let took = start.elapsed().as_secs_f64();
            assert!(!report.has_definite_leaks(), "{report}");
            println!("idle_threads: {threads} threads: checkpoint report {took:.3} s");
            took
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!("idle_threads: {threads} threads: median {:.3} s", times[2]);
    done.wait();
    for h in handles {
        h.join().expect("join");
    }
}

fn main() {
    let threads = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(4000);
    #[cfg(all(feature = "tracking", target_os = "linux"))]
    run(threads);
    #[cfg(not(all(feature = "tracking", target_os = "linux")))]
    eprintln!("idle_threads: skipped ({threads} threads): needs the `tracking` feature on Linux");
}
