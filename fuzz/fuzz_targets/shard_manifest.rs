//! Shard manifests (`seernet-label-manifest` JSON lines): parsing never panics; a parsed
//! manifest written and read again is equal.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seernet_fuzz::checks::shard_manifest(data);
});
