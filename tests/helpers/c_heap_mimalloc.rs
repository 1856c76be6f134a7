//! Child-process program for tests/c_heap.rs: C's heap tracked while the
//! Rust allocator wraps mimalloc, not `System`. The two heaps share
//! memwarden's quarantine, so frees of one language push blocks of the
//! other out of it: each must go back to the allocator that made it. (The
//! program frees each language's blocks in that language: the heaps are
//! distinct.)
use std::hint::black_box;

#[global_allocator]
static GLOBAL: memwarden::Warden<mimalloc::MiMalloc> = memwarden::Warden::wrap(mimalloc::MiMalloc);
memwarden::track_c_heap!();

fn main() {
    for i in 0..2000usize {
        // SAFETY: C blocks used within their sizes and freed once, each
        // language freeing its own (the two heaps are distinct here).
        unsafe {
            let p = libc::malloc(16 + i % 500).cast::<u8>();
            p.write(1);
            let big = vec![i as u8; 6000 + i % 3000];
            black_box(&big);
            libc::free(p.cast());
            drop(big);
            let b = Box::new([i as u64; 6]);
            let s = libc::strdup(c"a C string".as_ptr());
            drop(b);
            libc::free(s.cast());
            let q = libc::realloc(libc::malloc(8), 20_000);
            libc::free(q);
        }
    }
    println!("heap still sound");
}
