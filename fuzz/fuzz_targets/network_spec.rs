//! Network-spec JSON (`seernet-network`): parsing never panics; a parsed spec passes its own
//! check, and written and read again is equal.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seernet_fuzz::checks::network_spec(data);
});
