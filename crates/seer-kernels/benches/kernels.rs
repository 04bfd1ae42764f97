//! Benchmark of the training kernels (work in progress).
fn main() {}
