//! Predictor checkpoints (`seernet-predictor` safetensors): loading never panics and never
//! allocates from a claimed count; a loaded predictor written and read again is equal and
//! writes the same bytes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seernet_fuzz::checks::predictor(data);
});
