//! Training checkpoints (safetensors + `seernet-model` metadata): loading never panics and
//! never builds a model larger than the file's tensors; a loaded model saved again loads
//! back with the same spec, compression state, tensors and metadata.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seernet_fuzz::checks::checkpoint(data);
});
