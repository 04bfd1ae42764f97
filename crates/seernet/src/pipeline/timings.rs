//! Stage timings kept across invocations in `<out>/timings.json`: a resumed run adds its own
//! stages to those of the invocations before it instead of replacing them, so the report can
//! show both what this invocation took and what the whole run cost.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::report::StageTiming;

/// File name of the timings record in the run directory.
pub(crate) const FILE: &str = "timings.json";

/// What one invocation of the run spent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Invocation {
    /// Finished stages in order, seconds each.
    pub stages: Vec<StageTiming>,
    /// Wall seconds from the invocation's start to its last record (its end, when finished).
    pub wall_seconds: f64,
}

/// The timings of this invocation and of the earlier ones of the same run directory.
#[derive(Debug)]
pub(crate) struct Timings {
    path: PathBuf,
    past: Vec<Invocation>,
    now: Invocation,
    started: Instant,
}

impl Timings {
    /// The timings of a run in `out` whose invocation started at `started`; earlier
    /// invocations are read from `out/timings.json` (a missing or unreadable file means none:
    /// timings are a record, not a result, and never stop a run).
    pub(crate) fn open(out: &Path, started: Instant) -> Self {
        let path = out.join(FILE);
        let past = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<Invocation>>(&b).ok())
            .unwrap_or_default();
        Self {
            path,
            past,
            now: Invocation::default(),
            started,
        }
    }

    /// Records stage `name` as having taken the time since `t`, and saves.
    pub(crate) fn record(&mut self, name: &str, t: Instant) {
        self.now.stages.push(StageTiming {
            stage: name.into(),
            seconds: t.elapsed().as_secs_f64(),
        });
        self.save();
    }

    /// Sets this invocation's wall time to now, and saves.
    pub(crate) fn close(&mut self) {
        self.save();
    }

    /// Writes every invocation, this one included with its wall time so far (atomically;
    /// failures are ignored, see [`Timings::open`]).
    fn save(&mut self) {
        self.now.wall_seconds = self.started.elapsed().as_secs_f64();
        let mut all = self.past.clone();
        all.push(self.now.clone());
        if let Ok(js) = serde_json::to_string_pretty(&all) {
            let _ = crate::store::write_atomic(&self.path, (js + "\n").as_bytes());
        }
    }

    /// This invocation's stages.
    pub(crate) fn this(&self) -> &[StageTiming] {
        &self.now.stages
    }

    /// This invocation's wall seconds so far.
    pub(crate) fn wall(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The number of invocations, this one included.
    pub(crate) fn invocations(&self) -> usize {
        self.past.len() + 1
    }

    /// Seconds per stage summed over every invocation (stages in order of first appearance),
    /// and the summed wall seconds.
    pub(crate) fn all(&self) -> (Vec<StageTiming>, f64) {
        let mut sums: Vec<StageTiming> = Vec::new();
        let mut wall = 0.0;
        for inv in self.past.iter().chain(std::iter::once(&self.now)) {
            wall += if std::ptr::eq(inv, &self.now) {
                self.wall()
            } else {
                inv.wall_seconds
            };
            for s in &inv.stages {
                match sums.iter_mut().find(|x| x.stage == s.stage) {
                    Some(x) => x.seconds += s.seconds,
                    None => sums.push(s.clone()),
                }
            }
        }
        (sums, wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17, case 6: a resumed run replaced the timings of the real run (5.1 s, "total
    /// 9.8 s"). Invocations now add up.
    #[test]
    fn a_resumed_run_adds_to_the_earlier_invocations() {
        let td = tempfile::tempdir().unwrap();
        let mut a = Timings::open(td.path(), Instant::now());
        a.record("data", Instant::now());
        a.record("labels", Instant::now());
        a.close();
        // Pretend the first invocation labelled for 100 s and ran 120 s in all.
        let mut first: Vec<Invocation> =
            serde_json::from_slice(&std::fs::read(td.path().join(FILE)).unwrap()).unwrap();
        first[0].stages[1].seconds = 100.0;
        first[0].wall_seconds = 120.0;
        std::fs::write(td.path().join(FILE), serde_json::to_vec(&first).unwrap()).unwrap();

        let mut b = Timings::open(td.path(), Instant::now());
        b.record("labels", Instant::now());
        b.record("report", Instant::now());
        assert_eq!(b.invocations(), 2);
        assert_eq!(b.this().len(), 2);
        let (all, wall) = b.all();
        let names: Vec<&str> = all.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(names, ["data", "labels", "report"]);
        assert!(all[1].seconds >= 100.0 && all[1].seconds < 101.0);
        assert!((120.0..121.0).contains(&wall), "{wall}");
        let saved: Vec<Invocation> =
            serde_json::from_slice(&std::fs::read(td.path().join(FILE)).unwrap()).unwrap();
        assert_eq!(saved.len(), 2);
        assert_eq!(saved[0], first[0]);
    }

    #[test]
    fn an_unreadable_record_starts_afresh() {
        let td = tempfile::tempdir().unwrap();
        std::fs::write(td.path().join(FILE), b"{ torn").unwrap();
        let t = Timings::open(td.path(), Instant::now());
        assert_eq!(t.invocations(), 1);
    }
}
