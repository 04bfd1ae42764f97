//! Slurm as a [`Scheduler`]: a batch is one job array submitted with `sbatch`, watched with
//! `squeue` (by job name, so a restarted driver also finds the arrays of the driver it
//! replaces). `sacct` is not used: it needs an accounting database, which small clusters often
//! lack, and the result files already say which tasks finished.
//!
//! ```
//! use seer_label::cluster::slurm::array_spec;
//! assert_eq!(array_spec(&[0, 1, 2, 3, 4, 5, 6, 7], Some(2)), "0-7%2");
//! assert_eq!(array_spec(&[1, 3, 4, 5, 9], None), "1,3-5,9");
//! ```

use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ArrayRequest, Scheduler};
use crate::error::{Error, Result};

/// How the driver uses Slurm (`seernet compress --executor slurm`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlurmSettings {
    /// The `seernet` binary the array tasks run (an absolute path the nodes can run).
    pub program: std::path::PathBuf,
    /// `--partition` of every array (none: the cluster's default partition).
    pub partition: Option<String>,
    /// At most this many tasks of one array at a time (`--array=…%K`); none: no limit.
    pub max_parallel: Option<usize>,
    /// Further `sbatch` arguments, passed through after ours (`--time=30`, `--mem=4G`, ...).
    pub extra: Vec<String>,
    /// Labels per array task (≥ 1): a batch of n labels becomes ⌈n / this⌉ tasks.
    pub labels_per_task: usize,
    /// Resubmissions of a batch's unfinished tasks before the run gives up.
    pub retries: usize,
    /// Seconds between two `squeue` polls (> 0).
    pub poll_seconds: f64,
    /// The `sbatch` command.
    pub sbatch: String,
    /// The `squeue` command.
    pub squeue: String,
}

impl SlurmSettings {
    /// Settings running `program`: default partition, no parallelism limit, no extra
    /// arguments, one label per task, 2 retries, a poll every 5 s.
    pub fn new(program: impl Into<std::path::PathBuf>) -> Self {
        SlurmSettings {
            program: program.into(),
            partition: None,
            max_parallel: None,
            extra: Vec::new(),
            labels_per_task: 1,
            retries: 2,
            poll_seconds: 5.0,
            sbatch: "sbatch".into(),
            squeue: "squeue".into(),
        }
    }

    /// Err(Cluster) for zero labels per task, a zero parallelism limit or a poll interval
    /// that is not a positive number of seconds.
    pub fn check(&self) -> Result<()> {
        let bad = |msg: &str| Error::Cluster {
            batch: "settings".into(),
            msg: msg.into(),
        };
        if self.labels_per_task == 0 {
            return Err(bad("labels per task must be at least 1"));
        }
        if self.max_parallel == Some(0) {
            return Err(bad("the slurm parallelism limit must be at least 1"));
        }
        if !(self.poll_seconds.is_finite() && self.poll_seconds > 0.0) {
            return Err(bad(
                "the poll interval must be a positive number of seconds",
            ));
        }
        Ok(())
    }
}

/// `--array` value for `indices` (sorted, distinct): runs of consecutive indices as ranges,
/// `%K` appended when `max_parallel` is `Some(K)`.
pub fn array_spec(indices: &[usize], max_parallel: Option<usize>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        parts.push(if j == i {
            indices[i].to_string()
        } else {
            format!("{}-{}", indices[i], indices[j])
        });
        i = j + 1;
    }
    let mut s = parts.join(",");
    if let Some(k) = max_parallel {
        s.push_str(&format!("%{k}"));
    }
    s
}

/// The `sbatch` arguments of `req` (without the command itself): `--parsable`, the job name,
/// `--array`, one log file per task (`<log_dir>/%A_%a.out`), the working directory, the
/// partition, then [`SlurmSettings::extra`], then the script.
pub fn sbatch_args(s: &SlurmSettings, req: &ArrayRequest<'_>) -> Vec<String> {
    let mut a = vec![
        "--parsable".to_string(),
        format!("--job-name={}", req.name),
        format!("--array={}", array_spec(req.indices, s.max_parallel)),
        format!("--output={}/%A_%a.out", req.log_dir.display()),
        format!("--chdir={}", req.workdir.display()),
    ];
    if let Some(p) = &s.partition {
        a.push(format!("--partition={p}"));
    }
    a.extend(s.extra.iter().cloned());
    a.push(req.script.display().to_string());
    a
}

/// The job id in `sbatch --parsable` output (`123` or `123;cluster`).
pub fn parse_job_id(stdout: &str) -> Option<String> {
    let first = stdout.lines().find(|l| !l.trim().is_empty())?.trim();
    let id = first.split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then(|| id.to_string())
}

/// The distinct job ids of `squeue -h -o %F` output (the array job ids), in order.
pub fn parse_squeue(stdout: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for l in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !ids.iter().any(|i| i == l) {
            ids.push(l.to_string());
        }
    }
    ids
}

/// Slurm through its commands ([`SlurmSettings::sbatch`], [`SlurmSettings::squeue`]).
#[derive(Clone, Debug)]
pub struct Slurm {
    settings: SlurmSettings,
}

impl Slurm {
    /// A scheduler with these settings. Err(Cluster) as [`SlurmSettings::check`].
    pub fn new(settings: SlurmSettings) -> Result<Self> {
        settings.check()?;
        Ok(Slurm { settings })
    }
}

fn run(batch: &str, cmd: &str, args: &[String]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| Error::Cluster {
            batch: batch.into(),
            msg: format!("cannot run `{cmd}` ({e}): is Slurm installed on this host?"),
        })?;
    if !out.status.success() {
        return Err(Error::Cluster {
            batch: batch.into(),
            msg: format!(
                "`{cmd} {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Scheduler for Slurm {
    fn submit(&mut self, req: &ArrayRequest<'_>) -> Result<String> {
        let args = sbatch_args(&self.settings, req);
        let out = run(req.name, &self.settings.sbatch, &args)?;
        parse_job_id(&out).ok_or_else(|| Error::Cluster {
            batch: req.name.into(),
            msg: format!("no job id in the output of sbatch: {out:?}"),
        })
    }

    fn active(&mut self, name: &str) -> Result<Vec<String>> {
        let args = [
            "--noheader".to_string(),
            format!("--name={name}"),
            "--format=%F".to_string(),
        ];
        Ok(parse_squeue(&run(name, &self.settings.squeue, &args)?))
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs_f64(self.settings.poll_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn array_specs_and_sbatch_arguments() {
        assert_eq!(array_spec(&[0], None), "0");
        assert_eq!(array_spec(&[0, 1, 2, 3, 4, 5, 6, 7], Some(2)), "0-7%2");
        assert_eq!(array_spec(&[3], Some(4)), "3%4");
        assert_eq!(array_spec(&[0, 2, 3, 7, 8, 9], None), "0,2-3,7-9");
        let mut s = SlurmSettings::new("/opt/seernet");
        s.partition = Some("gpu".into());
        s.max_parallel = Some(3);
        s.extra = vec!["--time=30".into(), "--mem=4G".into()];
        let req = ArrayRequest {
            name: "seernet-0123abcd-initial",
            indices: &[0, 1, 2, 5],
            script: Path::new("/run/cluster/initial/task.sh"),
            log_dir: Path::new("/run/cluster/initial/logs"),
            workdir: Path::new("/run"),
        };
        assert_eq!(
            sbatch_args(&s, &req),
            [
                "--parsable",
                "--job-name=seernet-0123abcd-initial",
                "--array=0-2,5%3",
                "--output=/run/cluster/initial/logs/%A_%a.out",
                "--chdir=/run",
                "--partition=gpu",
                "--time=30",
                "--mem=4G",
                "/run/cluster/initial/task.sh",
            ]
        );
    }

    #[test]
    fn parsing_sbatch_and_squeue_output() {
        assert_eq!(parse_job_id("1234\n").as_deref(), Some("1234"));
        assert_eq!(parse_job_id("77;cluster\n").as_deref(), Some("77"));
        assert_eq!(parse_job_id("Submitted batch job 5\n"), None);
        assert_eq!(parse_job_id(""), None);
        assert_eq!(parse_squeue("12\n12\n 13 \n\n12\n"), ["12", "13"]);
        assert!(parse_squeue("").is_empty());
    }

    /// The commands as run: `sbatch` gets [`sbatch_args`] and its job id is parsed, `squeue`
    /// is asked by job name; a failing command is an error carrying its stderr.
    #[cfg(unix)]
    #[test]
    fn runs_sbatch_and_squeue_commands() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p.display().to_string()
        };
        let args_file = dir.path().join("args");
        let mut s = SlurmSettings::new("/opt/seernet");
        s.sbatch = script(
            "sbatch",
            &format!("echo \"$@\" > {}; echo '42;cluster'", args_file.display()),
        );
        s.squeue = script(
            "squeue",
            "case \"$*\" in *--name=seernet-x-initial*%F*) echo 42; echo 42;; esac",
        );
        let mut slurm = Slurm::new(s.clone()).unwrap();
        let req = ArrayRequest {
            name: "seernet-x-initial",
            indices: &[0, 1],
            script: Path::new("/r/task.sh"),
            log_dir: Path::new("/r/logs"),
            workdir: Path::new("/r"),
        };
        assert_eq!(slurm.submit(&req).unwrap(), "42");
        let seen = std::fs::read_to_string(&args_file).unwrap();
        assert_eq!(seen.trim(), sbatch_args(&s, &req).join(" "));
        assert_eq!(slurm.active("seernet-x-initial").unwrap(), ["42"]);
        assert!(slurm.active("seernet-x-active-1").unwrap().is_empty());
        s.sbatch = script(
            "sbatch2",
            "echo 'sbatch: error: invalid partition' >&2; exit 1",
        );
        let e = Slurm::new(s).unwrap().submit(&req).unwrap_err().to_string();
        assert!(e.contains("invalid partition"), "{e}");
    }

    #[test]
    fn bad_settings_and_a_missing_command_are_errors() {
        let mut s = SlurmSettings::new("seernet");
        s.labels_per_task = 0;
        assert!(Slurm::new(s.clone()).is_err());
        s.labels_per_task = 1;
        s.poll_seconds = f64::NAN;
        assert!(Slurm::new(s.clone()).is_err());
        s.poll_seconds = 1.0;
        s.max_parallel = Some(0);
        assert!(Slurm::new(s.clone()).is_err());
        s.max_parallel = None;
        s.squeue = "/nonexistent/squeue".into();
        let e = Slurm::new(s).unwrap().active("x").unwrap_err().to_string();
        assert!(e.contains("is Slurm installed"), "{e}");
    }
}
