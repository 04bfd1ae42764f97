//! Shared command-line options: which network (`--arch`, `--input`) and which search space
//! (`--prune-ratios`, `--bits`, `--residual-pruning`, ...). Other subcommands flatten these.

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::Args;
use seer_policy::{
    InputShape, NetworkSpec, ResidualPruning, SearchSpace, SpaceConfig, builtin, builtin_names,
};

/// The network: a built-in architecture or a user JSON file (`docs/network-spec.md`).
#[derive(Args, Clone, Debug)]
pub struct NetArgs {
    /// Built-in architecture (resnet20, resnet56, vgg-small, lenet5, resnet18, resnet50,
    /// mobilenetv2), or the path of a network JSON file (`*.json`), an ONNX model (`*.onnx`)
    /// or a checkpoint (`*.safetensors`).
    #[arg(long)]
    pub arch: String,
    /// Input shape HxWxC, e.g. 28x28x1 (built-ins only; default per architecture).
    #[arg(long)]
    pub input: Option<String>,
    /// Number of classes (built-ins only; default 10 for CIFAR-style nets, 1000 for ImageNet).
    #[arg(long)]
    pub classes: Option<usize>,
}

impl NetArgs {
    /// Builds the spec. Errors name the flag and value, or the file.
    pub fn spec(&self) -> Result<NetworkSpec> {
        let is_file = self.arch.ends_with(".json") || Path::new(&self.arch).is_file();
        if is_file {
            if self.input.is_some() || self.classes.is_some() {
                bail!(
                    "--input and --classes apply to built-in architectures; {} defines its own",
                    self.arch
                );
            }
            return file_spec(Path::new(&self.arch));
        }
        let input = match &self.input {
            Some(s) => Some(
                s.parse::<InputShape>()
                    .with_context(|| format!("--input {s}"))?,
            ),
            None => None,
        };
        if self.classes == Some(0) {
            bail!("--classes 0: the number of classes must be positive");
        }
        builtin(&self.arch, input, self.classes).map_err(|e| match e {
            seer_policy::Error::UnknownArch { .. } => anyhow::anyhow!(
                "--arch {}: unknown architecture (built in: {}; or give a network .json file)",
                self.arch,
                builtin_names().join(", ")
            ),
            e => e.into(),
        })
    }
}

/// The network in the file at `path`: an ONNX model (`*.onnx`, imported as `seernet import`
/// does), a checkpoint (`*.safetensors`; not a slimmed one, whose widths are a policy's), or a
/// network JSON file. Errors name the file.
pub fn file_spec(path: &Path) -> Result<NetworkSpec> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("onnx") => Ok(seernet::onnx::import_file(path)?.spec),
        Some("safetensors") => {
            let (model, _) = seer_nn::checkpoint::load(path, None, &candle_core::Device::Cpu)?;
            if model.is_slim() {
                bail!(
                    "{} holds a slimmed (compressed) network; give its baseline",
                    path.display()
                );
            }
            Ok(model.spec().clone())
        }
        _ => Ok(NetworkSpec::from_json_file(path)?),
    }
}

/// The weight quantizer of QAT fine-tunes (labels' and final ones; part of the labelling
/// protocol).
#[derive(Args, Clone, Copy, Debug)]
pub struct WeightQuantArg {
    /// Weight quantizer of the fine-tunes: `max` (step `max|w|/(2^(b-1)-1)` per output
    /// channel) or `lsq` (learned steps from a least-squares start, folded into the weights;
    /// docs/method.md §3, "Learned weight steps"); part of a labelling protocol
    /// [default: max].
    #[arg(
        long = "weight-quant",
        value_name = "max|lsq",
        default_value = "max",
        hide_default_value = true
    )]
    pub weight_quant: seer_nn::train::WeightQuant,
}

/// Search-space options (docs/method.md §1 defaults).
#[derive(Args, Clone, Debug, Default)]
pub struct SpaceArgs {
    /// Candidate pruning ratios, comma-separated, each in [0, 1).
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75")]
    pub prune_ratios: Vec<f64>,
    /// Candidate bit-widths for weights and activations (sets both --wbits and --abits).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["wbits", "abits"])]
    pub bits: Option<Vec<u32>>,
    /// Candidate weight bit-widths (default 2,3,4,5,6,8).
    #[arg(long, value_delimiter = ',')]
    pub wbits: Option<Vec<u32>>,
    /// Candidate activation bit-widths (default 2,3,4,5,6,8).
    #[arg(long, value_delimiter = ',')]
    pub abits: Option<Vec<u32>>,
    /// How residual additions constrain pruning: tied (one ratio per tie group) or masked
    /// (every conv its own unit; the residual stream keeps its full width).
    #[arg(long, default_value = "tied")]
    pub residual_pruning: String,
    /// One bit-width per unit for weights and activations.
    #[arg(long)]
    pub shared_bits: bool,
    /// Let the search choose the first layer's pruning and bits (fixed at 8/8 by default).
    #[arg(long)]
    pub no_fix_first: bool,
    /// Let the search choose the classifier's bits (fixed at 8/8 by default).
    #[arg(long)]
    pub no_fix_last: bool,
    /// Bit-width of fixed layers' weights and inputs.
    #[arg(long, default_value_t = 8)]
    pub fixed_bits: u32,
}

impl SpaceArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> Result<SpaceConfig> {
        let d = SpaceConfig::default();
        let residual_pruning: ResidualPruning = self
            .residual_pruning
            .parse()
            .with_context(|| format!("--residual-pruning {}", self.residual_pruning))?;
        let (wbits, abits) = match &self.bits {
            Some(b) => (b.clone(), b.clone()),
            None => (
                self.wbits.clone().unwrap_or(d.wbits),
                self.abits.clone().unwrap_or(d.abits),
            ),
        };
        Ok(SpaceConfig {
            prune_ratios: if self.prune_ratios.is_empty() {
                d.prune_ratios
            } else {
                self.prune_ratios.clone()
            },
            wbits,
            abits,
            residual_pruning,
            shared_bits: self.shared_bits,
            fix_first: !self.no_fix_first,
            fix_last: !self.no_fix_last,
            fixed_bits: self.fixed_bits,
        })
    }

    /// The search space of `spec` under these flags.
    pub fn space(&self, spec: NetworkSpec) -> Result<SearchSpace> {
        Ok(SearchSpace::new(spec, self.config()?)?)
    }
}
