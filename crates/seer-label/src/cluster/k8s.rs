//! Kubernetes: a manifest's shards as an Indexed Job (`completionMode: Indexed`), whose pods
//! read their shard index from `JOB_COMPLETION_INDEX` (`seernet label --shard /N`). Rendering
//! only: `seernet k8s-job` prints the YAML for `kubectl apply -f -`.
//!
//! Strings are written as YAML double-quoted scalars (JSON string syntax, which YAML accepts),
//! so paths and image names with any characters stay intact.
//!
//! ```
//! use seer_label::cluster::k8s::IndexedJob;
//! let job = IndexedJob::new("seernet-label", "registry.example/seernet:1", 8, 4,
//!     vec!["seernet".into(), "label".into(), "--shard".into(), "/8".into()]);
//! let yaml = job.render();
//! assert!(yaml.contains("completionMode: Indexed") && yaml.contains("completions: 8"));
//! ```

/// An Indexed Job running one shard per completion index.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexedJob {
    /// `metadata.name` (a DNS-1123 label: lowercase letters, digits and `-`, at most 63).
    pub name: String,
    /// Container image holding the `seernet` binary.
    pub image: String,
    /// Completions = shards N.
    pub completions: usize,
    /// Pods at a time.
    pub parallelism: usize,
    /// The container's command (argv).
    pub command: Vec<String>,
    /// Failed pods tolerated over the whole job before it fails (`backoffLimit`).
    pub backoff_limit: usize,
    /// A PersistentVolumeClaim mounted into every pod (the shared run directory), if any.
    pub claim: Option<String>,
    /// Where the claim is mounted.
    pub mount_path: String,
}

impl IndexedJob {
    /// A job of `completions` shards, `parallelism` at a time, with a backoff limit of
    /// 2 × completions, no volume (mount path `/data` once a claim is set).
    pub fn new(
        name: &str,
        image: &str,
        completions: usize,
        parallelism: usize,
        command: Vec<String>,
    ) -> Self {
        IndexedJob {
            name: name.into(),
            image: image.into(),
            completions,
            parallelism,
            command,
            backoff_limit: 2 * completions,
            claim: None,
            mount_path: "/data".into(),
        }
    }

    /// Err(String) saying what is wrong: a name that is not a DNS-1123 label, an empty image
    /// or command, zero completions or parallelism.
    pub fn check(&self) -> Result<(), String> {
        let n = &self.name;
        let ok_chars = n
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if n.is_empty() || n.len() > 63 || !ok_chars || n.starts_with('-') || n.ends_with('-') {
            return Err(format!(
                "job name {n:?} is not a DNS-1123 label (lowercase letters, digits and '-', \
                 at most 63, starting and ending with a letter or digit)"
            ));
        }
        if self.image.trim().is_empty() {
            return Err("the image is empty".into());
        }
        if self.command.is_empty() {
            return Err("the command is empty".into());
        }
        if self.completions == 0 || self.parallelism == 0 {
            return Err("completions and parallelism must be at least 1".into());
        }
        Ok(())
    }

    /// The Job as YAML (`batch/v1`).
    pub fn render(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
        let command = self
            .command
            .iter()
            .map(|a| q(a))
            .collect::<Vec<_>>()
            .join(", ");
        let mut y = String::new();
        y.push_str(&format!(
            "# {} shard(s) of a seernet manifest, {} at a time; each pod runs the shard of its \
             JOB_COMPLETION_INDEX.\n",
            self.completions, self.parallelism
        ));
        y.push_str("apiVersion: batch/v1\nkind: Job\nmetadata:\n");
        y.push_str(&format!("  name: {}\n", q(&self.name)));
        y.push_str("spec:\n  completionMode: Indexed\n");
        y.push_str(&format!("  completions: {}\n", self.completions));
        y.push_str(&format!("  parallelism: {}\n", self.parallelism));
        y.push_str(&format!("  backoffLimit: {}\n", self.backoff_limit));
        y.push_str("  template:\n    spec:\n      restartPolicy: Never\n      containers:\n");
        y.push_str("        - name: label\n");
        y.push_str(&format!("          image: {}\n", q(&self.image)));
        y.push_str(&format!("          command: [{command}]\n"));
        if let Some(claim) = &self.claim {
            y.push_str("          volumeMounts:\n            - name: run\n");
            y.push_str(&format!(
                "              mountPath: {}\n",
                q(&self.mount_path)
            ));
            y.push_str("      volumes:\n        - name: run\n          persistentVolumeClaim:\n");
            y.push_str(&format!("            claimName: {}\n", q(claim)));
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_indexed_job() {
        let mut job = IndexedJob::new(
            "seernet-label-abc",
            "reg.example/seernet:0.1",
            5,
            2,
            [
                "seernet",
                "label",
                "--manifest",
                "/data/M \"x\".jsonl",
                "--shard",
                "/5",
            ]
            .map(String::from)
            .to_vec(),
        );
        job.claim = Some("runs".into());
        job.check().unwrap();
        let y = job.render();
        let want = "\
apiVersion: batch/v1
kind: Job
metadata:
  name: \"seernet-label-abc\"
spec:
  completionMode: Indexed
  completions: 5
  parallelism: 2
  backoffLimit: 10
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: label
          image: \"reg.example/seernet:0.1\"
          command: [\"seernet\", \"label\", \"--manifest\", \"/data/M \\\"x\\\".jsonl\", \"--shard\", \"/5\"]
          volumeMounts:
            - name: run
              mountPath: \"/data\"
      volumes:
        - name: run
          persistentVolumeClaim:
            claimName: \"runs\"
";
        let body = y.split_once('\n').unwrap().1;
        assert_eq!(body, want);
        assert!(y.starts_with("# 5 shard(s)"));
        // Without a claim: no volumes.
        job.claim = None;
        assert!(!job.render().contains("volume"));
    }

    #[test]
    fn invalid_jobs_are_refused() {
        let ok = IndexedJob::new("a-1", "img", 1, 1, vec!["seernet".into()]);
        ok.check().unwrap();
        for (job, needle) in [
            (
                IndexedJob {
                    name: "Upper".into(),
                    ..ok.clone()
                },
                "DNS-1123",
            ),
            (
                IndexedJob {
                    name: "x".repeat(64),
                    ..ok.clone()
                },
                "DNS-1123",
            ),
            (
                IndexedJob {
                    image: " ".into(),
                    ..ok.clone()
                },
                "image",
            ),
            (
                IndexedJob {
                    command: vec![],
                    ..ok.clone()
                },
                "command",
            ),
            (
                IndexedJob {
                    parallelism: 0,
                    ..ok.clone()
                },
                "at least 1",
            ),
        ] {
            let e = job.check().unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
