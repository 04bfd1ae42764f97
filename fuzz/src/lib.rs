//! What every fuzz target shares: the properties checked ([`checks`], one function per
//! loader) and an allocator that turns any single allocation above [`MAX_ALLOC`] into a crash.
//!
//! A loader must size its buffers from the bytes it holds, never from a number it read
//! (issue 21): with inputs of a few KiB, no honest allocation comes near 64 MiB, so one that
//! does is a size taken from the file unchecked. Refusing it (a null pointer, which Rust
//! turns into an abort) makes libFuzzer report it as a crash with the input that caused it,
//! where the default would be a slow out-of-memory or nothing at all.

use std::alloc::{GlobalAlloc, Layout, System};

pub mod checks;

/// Largest single allocation a fuzz target may make (bytes): 64 MiB.
pub const MAX_ALLOC: usize = 64 << 20;

/// The system allocator, refusing any allocation larger than [`MAX_ALLOC`].
pub struct Capped;

// SAFETY: every call is forwarded unchanged to `System` or refused with a null pointer,
// which the `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Capped = Capped;
