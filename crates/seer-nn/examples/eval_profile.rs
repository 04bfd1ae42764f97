//! Profiling aid: the f32 evaluation of the ResNet-20 baseline on the validation split, repeated.
use std::path::PathBuf;

use candle_core::Device;
use seer_nn::checkpoint;
use seer_nn::data::{self, DatasetName};
use seer_nn::train;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: first statement of main, no other thread exists yet.
    unsafe { seer_nn::candle_elementwise_on_caller() };
    seer_nn::keep_freed_memory();
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ckpt = root.join("assets/baselines/resnet20-fashion-mnist.safetensors");
    let splits = data::load(DatasetName::parse("fashion-mnist")?)?;
    let norm = splits.normalize();
    let (base, _) = checkpoint::load(&ckpt, Some("resnet20"), &Device::Cpu)?;
    for _ in 0..reps {
        let e = train::evaluate(&base, &splits.val, &norm, 256)?;
        println!("{:.1} img/s", e.images_per_s);
    }
    Ok(())
}
