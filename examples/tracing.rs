//! Leak reports and heap statistics as `tracing` events.
//!
//! ```sh
//! DEBUG_MEMORY=1 cargo run --example tracing --features tracing
//! ```
use std::time::Duration;

#[global_allocator]
static GLOBAL: memwarden::Warden = memwarden::Warden::new();

#[inline(never)]
fn leak_a_little() {
    std::mem::forget(vec![1u32; 16]);
}

fn main() {
    tracing_subscriber::fmt().with_target(true).init();
    memwarden::trace::spawn_stats_events(Duration::from_millis(20));
    let mut kept = Vec::new();
    for i in 0..5 {
        kept.push(vec![i as u8; 1000]);
        std::thread::sleep(Duration::from_millis(10));
    }
    leak_a_little();
    std::thread::sleep(Duration::from_millis(30));
    println!("kept {} buffers", kept.len());
}
