//! `seernet k8s-job`: print a Kubernetes Indexed Job that labels a manifest's shards, one pod per
//! completion index (`seernet label --shard /N`, index from `JOB_COMPLETION_INDEX`). Rendering
//! only (`seernet::label::cluster::k8s`); apply it with `kubectl apply -f -`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use seernet::label::cluster::k8s::IndexedJob;
use seernet::label::short_digest;
use seernet::manifest::Manifest;

/// Arguments of `seernet k8s-job`. Paths are written into the pods' command as given: give
/// them as the pods see them (the manifest is also read here, to count its policies).
#[derive(Args, Debug)]
pub struct K8sJobArgs {
    /// Manifest of policies to label (`seernet manifest`, or a batch of a compress run).
    #[arg(long, value_name = "M.jsonl")]
    manifest: PathBuf,
    /// Container image with the `seernet` binary.
    #[arg(long, value_name = "IMAGE")]
    image: String,
    /// Pods at a time.
    #[arg(long, value_name = "K")]
    parallelism: usize,
    /// The trained baseline checkpoint of the manifest's protocol.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Directory for the per-policy result files [default: `results` beside the manifest].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Labels per pod: N = ⌈policies / this⌉ completions.
    #[arg(long, default_value_t = 1, value_name = "L")]
    labels_per_task: usize,
    /// PersistentVolumeClaim holding the run directory, mounted into every pod.
    #[arg(long, value_name = "CLAIM")]
    claim: Option<String>,
    /// Where the claim is mounted in the pods.
    #[arg(long, default_value = "/data", value_name = "PATH")]
    mount: String,
    /// Job name [default: seernet-label-<first 8 hex digits of the manifest's hash>].
    #[arg(long)]
    name: Option<String>,
    /// The seernet binary inside the image.
    #[arg(long, default_value = "seernet", value_name = "PATH")]
    program: String,
    /// Failed pods tolerated per completion (`backoffLimit` = this × completions).
    #[arg(long, default_value_t = 2, value_name = "N")]
    retries: usize,
}

/// Runs `seernet k8s-job`.
pub fn run(a: K8sJobArgs) -> Result<()> {
    if a.labels_per_task == 0 {
        bail!("--labels-per-task must be at least 1");
    }
    if a.parallelism == 0 {
        bail!("--parallelism must be at least 1");
    }
    let m = Manifest::load(&a.manifest)?;
    if m.entries.is_empty() {
        bail!("{}: the manifest lists no policy", a.manifest.display());
    }
    let n = m.entries.len().div_ceil(a.labels_per_task);
    let out = a.out.clone().unwrap_or_else(|| {
        a.manifest
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("results")
    });
    let name = a.name.clone().unwrap_or_else(|| {
        format!(
            "seernet-label-{}",
            &short_digest(m.to_jsonl().as_bytes())[..8]
        )
    });
    let command = vec![
        a.program.clone(),
        "label".into(),
        "--manifest".into(),
        a.manifest.display().to_string(),
        "--shard".into(),
        format!("/{n}"),
        "--out".into(),
        out.display().to_string(),
        "--model".into(),
        a.model.display().to_string(),
    ];
    let mut job = IndexedJob::new(&name, &a.image, n, a.parallelism, command);
    job.backoff_limit = a.retries * n;
    job.claim = a.claim.clone();
    job.mount_path = a.mount.clone();
    job.check()
        .map_err(anyhow::Error::msg)
        .context("seernet k8s-job")?;
    super::emit(&job.render())
}
