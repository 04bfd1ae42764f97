//! IDX files (images and labels, plain or gzip): parsing never panics, never allocates what
//! the file does not hold; a parsed array re-encodes to the same bytes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seernet_fuzz::checks::idx(data);
});
