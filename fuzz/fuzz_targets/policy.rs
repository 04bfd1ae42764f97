//! Policy JSON (`seernet-policy`): parsing never panics; a parsed policy written and read
//! again is equal.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seernet_fuzz::checks::policy(data);
});
