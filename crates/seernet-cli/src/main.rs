//! The `seernet` command-line tool: one subcommand per area, each in `src/cli/<area>.rs`.

mod cli;

use clap::{Parser, Subcommand};

/// SeerNet-rs: automatic compression of CNNs (structured pruning + mixed precision).
#[derive(Parser, Debug)]
#[command(name = "seernet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job: label, learn a predictor, search per budget, fine-tune, export, report.
    Compress(Box<cli::compress::CompressArgs>),
    /// MACs, BOPs and model size of a network under a policy, per layer and in total.
    Complexity(cli::complexity::ComplexityArgs),
    /// The searchable units and residual tie groups of a network's search space.
    Space(cli::space::SpaceArgsCmd),
    /// Train a full-precision network on a prepared dataset and write a checkpoint.
    Train(cli::train::TrainArgs),
    /// Top-1 accuracy of a checkpoint on a dataset split (`--json`: top1, n, images_per_s).
    Eval(cli::eval::EvalArgs),
    /// Apply a policy to a checkpoint, calibrate and fine-tune it with QAT.
    Finetune(cli::finetune::FinetuneArgs),
    /// Accuracy predictor: cross-validate, fit and evaluate on a CSV of samples.
    Predictor(cli::predictor::PredictorArgs),
    /// Predicted top-1 of one policy on a trained predictor; warns when it extrapolates.
    Predict(cli::predict::PredictArgs),
    /// Fold per-policy label results (from `seernet label` shards) into a label store.
    Merge(cli::merge::MergeArgs),
    /// The best policy for a budget on a trained predictor (barrier, pgd, evo or random search).
    Search(cli::search::SearchArgs),
    /// The predicted Pareto front: the best policy for N budgets from cheapest to most expensive.
    Pareto(cli::search::ParetoArgs),
    /// Label one shard of a manifest of policies (fine-tune + validation top-1), one file per policy.
    Label(cli::label::LabelArgs),
    /// Print a Kubernetes Indexed Job that labels a manifest's shards (one pod per index).
    K8sJob(cli::k8s_job::K8sJobArgs),
    /// Write a manifest of policies to label under one protocol (for `label --shard`).
    Manifest(cli::manifest::ManifestArgs),
    /// Run an exported model on a dataset split on the integer engine; compare with fake-quant.
    Infer(cli::infer::InferArgs),
    /// Write a fine-tuned compressed checkpoint as an integer-engine model (for `infer`).
    Export(cli::export::ExportArgs),
    /// Import an ONNX CNN (opset 13+) as a checkpoint the other commands accept.
    Import(cli::import::ImportArgs),
}

fn main() {
    // SAFETY: first statement of main, no other thread exists yet.
    unsafe { seer_nn::candle_elementwise_on_caller() };
    seer_nn::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Complexity(a) => cli::complexity::run(a),
        Command::Space(a) => cli::space::run(a),
        Command::Compress(a) => cli::compress::run_cmd(*a),
        Command::Train(a) => cli::train::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Finetune(a) => cli::finetune::run(a),
        Command::Predictor(a) => cli::predictor::run(a),
        Command::Predict(a) => cli::predict::run(a),
        Command::Merge(a) => cli::merge::run(a),
        Command::Search(a) => cli::search::run_search(a),
        Command::Pareto(a) => cli::search::run_pareto(a),
        Command::Label(a) => cli::label::run(a),
        Command::Manifest(a) => cli::manifest::run(a),
        Command::K8sJob(a) => cli::k8s_job::run(a),
        Command::Infer(a) => cli::infer::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Import(a) => cli::import::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
