//! Label-store files (checksummed JSON lines): parsing never panics. For a store that
//! parses: every record re-serialises to a line that parses back equal; the store cut at any
//! point after its header (a torn write) still parses, to a prefix of its records, with the
//! cut line reported as the dropped tail; its record lines in reverse order (a store merged
//! in another order) parse to the same set of policies.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seernet_fuzz::checks::label_store(data);
});
