//! Checked size arithmetic: C's `malloc_add`/`malloc_mul` idea in Rust form.
//!
//! Byte counts computed from untrusted or large numbers (`n * size`,
//! `header + n * size`) must never wrap around: a wrapped count allocates a
//! block that is too small, and the next write overruns it. The helpers here
//! compute such counts, build a [`Layout`] from them and allocate, and
//! report an error instead of wrapping, panicking or aborting:
//!
//! | helper | returns |
//! | --- | --- |
//! | [`bytes_add`], [`bytes_mul`] | `Result<usize, SizeError>` |
//! | [`array_layout`], [`header_array_layout`] | `Result<Layout, SizeError>` (and the array's offset) |
//! | [`try_alloc_array`], [`try_alloc_zeroed_array`] | `Result<Box<[MaybeUninit<T>]>, AllocError>` |
//! | [`try_vec_with_capacity`], [`try_reserve`] | `Result<_, AllocError>` |
//!
//! and the infallible forms for collections, which behave like the standard
//! library's (a size overflow panics, exhaustion calls
//! [`handle_alloc_error`]) but say which numbers overflowed:
//! [`vec_with_capacity_checked`], [`reserve_checked`], [`alloc_array`].
//!
//! ```
//! use memwarden::checked;
//!
//! let n = usize::MAX / 4;
//! assert!(checked::bytes_mul(n, 8).is_err());          // would wrap
//! assert!(checked::try_alloc_array::<u64>(n).is_err()); // never allocates
//! let buf = checked::try_alloc_array::<u64>(16).unwrap();
//! assert_eq!(buf.len(), 16);
//! ```
//!
//! A valid [`Layout`] also needs its size, rounded up to its alignment, to
//! be at most `isize::MAX`; the layout helpers check that too and report it
//! as a [`SizeError`].
use std::alloc::{Layout, handle_alloc_error};
use std::error::Error;
use std::fmt;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

/// A byte count that does not fit: `a + b` or `n * size` overflowed, or a
/// layout would be larger than `isize::MAX` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeError {
    op: Op,
    a: usize,
    b: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Mul,
    /// `a` bytes aligned to `b` is more than `isize::MAX`.
    Layout,
}

impl SizeError {
    /// The two operands of the computation that overflowed (for a layout
    /// that is too large: its size and its alignment).
    pub fn operands(&self) -> (usize, usize) {
        (self.a, self.b)
    }
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Op::Add => write!(
                f,
                "byte count overflow: {} + {} does not fit",
                self.a, self.b
            ),
            Op::Mul => write!(
                f,
                "byte count overflow: {} * {} does not fit",
                self.a, self.b
            ),
            Op::Layout => write!(
                f,
                "allocation too large: {} bytes aligned to {} exceed isize::MAX",
                self.a, self.b
            ),
        }
    }
}

impl Error for SizeError {}

/// An allocation that could not be made: its size overflowed, or the
/// allocator had no memory for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocError {
    /// The byte count overflowed; nothing was asked of the allocator.
    Size(SizeError),
    /// The allocator returned null for this layout.
    Exhausted(Layout),
}

impl From<SizeError> for AllocError {
    fn from(e: SizeError) -> Self {
        AllocError::Size(e)
    }
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Size(e) => e.fmt(f),
            AllocError::Exhausted(l) => write!(
                f,
                "out of memory: allocating {} bytes (align {}) failed",
                l.size(),
                l.align()
            ),
        }
    }
}

impl Error for AllocError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            AllocError::Size(e) => Some(e),
            AllocError::Exhausted(_) => None,
        }
    }
}

/// `a + b` bytes, or an error if that does not fit in `usize`.
///
/// ```
/// assert_eq!(memwarden::checked::bytes_add(16, 48), Ok(64));
/// assert!(memwarden::checked::bytes_add(usize::MAX, 1).is_err());
/// ```
#[inline]
pub const fn bytes_add(a: usize, b: usize) -> Result<usize, SizeError> {
    match a.checked_add(b) {
        Some(v) => Ok(v),
        None => Err(SizeError { op: Op::Add, a, b }),
    }
}

/// `n * size` bytes, or an error if that does not fit in `usize`.
///
/// ```
/// assert_eq!(memwarden::checked::bytes_mul(10, 24), Ok(240));
/// assert!(memwarden::checked::bytes_mul(usize::MAX / 2, 3).is_err());
/// ```
#[inline]
pub const fn bytes_mul(n: usize, size: usize) -> Result<usize, SizeError> {
    match n.checked_mul(size) {
        Some(v) => Ok(v),
        None => Err(SizeError {
            op: Op::Mul,
            a: n,
            b: size,
        }),
    }
}

/// A layout of `size` bytes aligned to `align` (a power of two), or an
/// error if it would exceed `isize::MAX` once rounded up.
fn layout(size: usize, align: usize) -> Result<Layout, SizeError> {
    Layout::from_size_align(size, align).map_err(|_| SizeError {
        op: Op::Layout,
        a: size,
        b: align,
    })
}

/// The layout of an array of `n` values of `T`, or an error if it does not
/// fit.
///
/// ```
/// let l = memwarden::checked::array_layout::<u32>(10).unwrap();
/// assert_eq!((l.size(), l.align()), (40, 4));
/// assert!(memwarden::checked::array_layout::<u64>(usize::MAX / 4).is_err());
/// ```
pub fn array_layout<T>(n: usize) -> Result<Layout, SizeError> {
    layout(bytes_mul(n, size_of::<T>())?, align_of::<T>())
}

/// The layout of a header `H` followed by an array of `n` values of `T` (a
/// C struct with a flexible array member), and the array's byte offset.
///
/// ```
/// let (l, off) = memwarden::checked::header_array_layout::<u64, u8>(5).unwrap();
/// assert_eq!((l.size(), l.align(), off), (16, 8, 8));
/// ```
pub fn header_array_layout<H, T>(n: usize) -> Result<(Layout, usize), SizeError> {
    let header = Layout::new::<H>();
    let array = array_layout::<T>(n)?;
    let align = header.align().max(array.align());
    // Offset of the array: the header's size rounded up to T's alignment.
    let pad = header.size().wrapping_neg() & (array.align() - 1);
    let offset = bytes_add(header.size(), pad)?;
    let size = bytes_add(offset, array.size())?;
    Ok((layout(size, align)?.pad_to_align(), offset))
}

/// Allocates room for `n` values of `T`, uninitialised, or returns an
/// error if the size overflows or the allocator has no memory. Never
/// panics and never aborts.
///
/// Zero-sized requests (`n == 0` or a zero-sized `T`) succeed without
/// allocating.
pub fn try_alloc_array<T>(n: usize) -> Result<Box<[MaybeUninit<T>]>, AllocError> {
    alloc_slice(n, false)
}

/// Like [`try_alloc_array`], with every byte zeroed.
pub fn try_alloc_zeroed_array<T>(n: usize) -> Result<Box<[MaybeUninit<T>]>, AllocError> {
    alloc_slice(n, true)
}

fn alloc_slice<T>(n: usize, zeroed: bool) -> Result<Box<[MaybeUninit<T>]>, AllocError> {
    let layout = array_layout::<T>(n)?;
    let ptr: NonNull<MaybeUninit<T>> = if layout.size() == 0 {
        NonNull::dangling()
    } else {
        // SAFETY: `layout` has a non-zero size (checked just above).
        let p = unsafe {
            if zeroed {
                std::alloc::alloc_zeroed(layout)
            } else {
                std::alloc::alloc(layout)
            }
        };
        NonNull::new(p.cast()).ok_or(AllocError::Exhausted(layout))?
    };
    let slice = NonNull::slice_from_raw_parts(ptr, n);
    // SAFETY:
    // * `ptr` was allocated by the global allocator with the layout of
    //   `[MaybeUninit<T>; n]` (or is dangling and well aligned for a
    //   zero-sized one), which is what `Box<[MaybeUninit<T>]>` frees with;
    // * `MaybeUninit<T>` needs no initialisation.
    Ok(unsafe { Box::from_raw(slice.as_ptr()) })
}

/// Like [`try_alloc_array`], but on failure behaves as the standard
/// library's collections do: a size overflow panics (with the numbers that
/// overflowed), exhaustion calls [`handle_alloc_error`].
#[track_caller]
pub fn alloc_array<T>(n: usize) -> Box<[MaybeUninit<T>]> {
    match try_alloc_array(n) {
        Ok(b) => b,
        Err(e) => fail(e),
    }
}

/// A `Vec` with room for at least `n` values, or an error if the size
/// overflows or the allocator has no memory. Never panics.
pub fn try_vec_with_capacity<T>(n: usize) -> Result<Vec<T>, AllocError> {
    let mut v = Vec::new();
    try_reserve(&mut v, n)?;
    Ok(v)
}

/// Makes room for `additional` more values in `v` (exactly, as
/// [`Vec::try_reserve_exact`]), or returns an error naming the overflow or
/// the layout that could not be allocated. Never panics.
pub fn try_reserve<T>(v: &mut Vec<T>, additional: usize) -> Result<(), AllocError> {
    let want = bytes_add(v.len(), additional)?;
    let layout = array_layout::<T>(want)?;
    v.try_reserve_exact(additional)
        .map_err(|_| AllocError::Exhausted(layout))
}

/// `Vec::with_capacity(n)`, with the overflow check made explicit: panics
/// with the numbers that overflowed, and calls [`handle_alloc_error`] when
/// memory runs out.
#[track_caller]
pub fn vec_with_capacity_checked<T>(n: usize) -> Vec<T> {
    match try_vec_with_capacity(n) {
        Ok(v) => v,
        Err(e) => fail(e),
    }
}

/// `v.reserve_exact(additional)`, with the overflow check made explicit
/// (see [`vec_with_capacity_checked`]).
#[track_caller]
pub fn reserve_checked<T>(v: &mut Vec<T>, additional: usize) {
    if let Err(e) = try_reserve(v, additional) {
        fail(e)
    }
}

#[cold]
#[track_caller]
fn fail(e: AllocError) -> ! {
    match e {
        AllocError::Size(e) => panic!("memwarden: {e}"),
        AllocError::Exhausted(layout) => handle_alloc_error(layout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_mul_report_their_operands() {
        let e = bytes_add(usize::MAX, 2).unwrap_err();
        assert_eq!(e.operands(), (usize::MAX, 2));
        assert_eq!(
            e.to_string(),
            format!("byte count overflow: {} + 2 does not fit", usize::MAX)
        );
        let e = bytes_mul(3, usize::MAX / 2).unwrap_err();
        assert!(e.to_string().starts_with("byte count overflow: 3 * "));
        assert_eq!(bytes_mul(0, usize::MAX), Ok(0));
        assert_eq!(bytes_add(usize::MAX - 1, 1), Ok(usize::MAX));
    }

    #[test]
    fn layouts_check_the_isize_limit() {
        let max = isize::MAX as usize;
        assert!(array_layout::<u8>(max).is_ok());
        let e = array_layout::<u8>(max + 1).unwrap_err();
        assert!(e.to_string().starts_with("allocation too large"), "{e}");
        assert!(array_layout::<[u8; 3]>(max / 2).is_err());
        assert_eq!(array_layout::<()>(usize::MAX).unwrap().size(), 0);
    }

    #[test]
    fn header_array_pads_between_and_after() {
        #[repr(C)]
        struct H {
            _a: u8,
        }
        let (l, off) = header_array_layout::<H, u32>(3).unwrap();
        assert_eq!((l.size(), l.align(), off), (16, 4, 4));
        let (l, off) = header_array_layout::<u64, u8>(1).unwrap();
        assert_eq!((l.size(), off), (16, 8));
        assert!(header_array_layout::<u64, u64>(usize::MAX / 8).is_err());
    }

    #[test]
    fn try_alloc_array_zero_sized_and_zeroed() {
        assert_eq!(try_alloc_array::<u64>(0).unwrap().len(), 0);
        assert_eq!(try_alloc_array::<()>(usize::MAX).unwrap().len(), usize::MAX);
        let z = try_alloc_zeroed_array::<u32>(7).unwrap();
        // SAFETY: zeroed bytes are a valid u32.
        assert!(z.iter().all(|v| unsafe { v.assume_init() } == 0));
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        assert!(matches!(
            try_alloc_array::<u64>(usize::MAX / 4),
            Err(AllocError::Size(_))
        ));
        let mut v = vec![1u8];
        assert!(matches!(
            try_reserve(&mut v, usize::MAX),
            Err(AllocError::Size(_))
        ));
        assert_eq!(v, [1]);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri reports huge allocations as an error")]
    fn exhaustion_is_an_error_not_an_abort() {
        // 2^46 bytes: a valid layout no allocator can serve here.
        // black_box: an optimised build may drop an allocation whose result
        // is never used, and then "succeed".
        let n = std::hint::black_box(1usize << 43);
        match std::hint::black_box(try_alloc_array::<u64>(n)) {
            Err(AllocError::Exhausted(l)) => assert_eq!(l.size(), n * 8),
            other => panic!("expected exhaustion, got {:?}", other.map(|b| b.len())),
        }
        let e = std::hint::black_box(try_vec_with_capacity::<u64>(n)).unwrap_err();
        assert!(
            e.to_string().starts_with("out of memory: allocating "),
            "{e}"
        );
    }

    #[test]
    fn infallible_forms_panic_with_the_numbers() {
        let err =
            std::panic::catch_unwind(|| vec_with_capacity_checked::<u32>(usize::MAX)).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.starts_with("memwarden: byte count overflow: "), "{msg}");
        let v: Vec<u16> = vec_with_capacity_checked(10);
        assert!(v.capacity() >= 10);
        let mut v = vec![0u8; 3];
        reserve_checked(&mut v, 5);
        assert!(v.capacity() >= 8);
        assert_eq!(alloc_array::<u8>(4).len(), 4);
    }
}
