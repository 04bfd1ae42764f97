//! Exported integer models (`seernet-int-model`): loading never panics and never allocates
//! from a claimed size; a loaded model writes back to the same bytes and reads back equal.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seernet_fuzz::checks::int_model(data);
});
