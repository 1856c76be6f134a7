//! A small program with real leaks: run it with tracking on to see
//! memwarden's report.
//!
//! ```sh
//! DEBUG_MEMORY=1 cargo run --example leaky
//! ```
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;

#[global_allocator]
static GLOBAL: memwarden::Warden = memwarden::Warden::new();

/// A configuration cache filled once: still reachable, not a leak.
static CONFIG: OnceLock<Vec<String>> = OnceLock::new();

struct Node {
    name: String,
    next: Option<Rc<RefCell<Node>>>,
}

/// Leaks a buffer: nothing points to it once this returns.
#[inline(never)]
fn make_buffer() {
    let buffer = vec![0u8; 64];
    std::mem::forget(buffer);
}

/// Leaks a two-node `Rc` cycle: one node is reported definitely lost, the
/// other (and both names) indirectly lost.
#[inline(never)]
fn make_cycle() {
    let a = Rc::new(RefCell::new(Node {
        name: "a".repeat(10),
        next: None,
    }));
    let b = Rc::new(RefCell::new(Node {
        name: "b".repeat(10),
        next: Some(Rc::clone(&a)),
    }));
    a.borrow_mut().next = Some(Rc::clone(&b));
    println!("made a cycle: {} -> {}", a.borrow().name, b.borrow().name);
}

/// Leaks one small box per request, the classic slow leak.
#[inline(never)]
fn handle_requests(n: usize) {
    for i in 0..n {
        let session = Box::new([i as u64; 4]);
        Box::leak(session);
    }
}

fn main() {
    memwarden::init_from_args(std::env::args_os());
    CONFIG.get_or_init(|| vec!["verbose".to_owned(), "color".to_owned()]);
    make_buffer();
    make_cycle();
    handle_requests(10);
    println!("done; tracking on: {}", memwarden::is_enabled());
}
