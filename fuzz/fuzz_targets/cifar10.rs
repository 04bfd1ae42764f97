//! CIFAR-10 binary batches: parsing never panics; the records read are exactly the bytes
//! (label, then pixels) of the file, in order.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seernet_fuzz::checks::cifar10(data);
});
