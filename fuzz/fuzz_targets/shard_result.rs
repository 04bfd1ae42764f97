//! Per-policy shard result files (`seernet-label-result`): parsing never panics; a parsed
//! result written and read again is equal.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seernet_fuzz::checks::shard_result(data);
});
