//! The run directory's driver lock (`driver.lock`): one driver per run directory, also when the
//! directory is on a filesystem shared by several hosts (where the label store's advisory lock
//! may not reach the other hosts).
//!
//! The file holds one JSON object, `{"pid":..,"host":"..","start_ticks":..}`, and is created
//! atomically (written to a temporary file, then hard-linked to its name, which fails when the
//! name exists), so a reader never sees a half-written lock. A lock whose holder is gone is
//! *stale*: on the same host, its process no longer exists, or a process with that PID started
//! at another time (`start_ticks`, field 22 of `/proc/<pid>/stat`, so a reused PID is not
//! mistaken for the holder). A stale lock is taken over and reported; a lock held by a live
//! process, or by another host (whose processes this host cannot see), is an error naming the
//! holder. Dropping the [`RunLock`] removes the file.
//!
//! ```
//! use seer_label::cluster::RunLock;
//! let dir = tempfile::tempdir().unwrap();
//! let (lock, stale) = RunLock::acquire(dir.path()).unwrap();
//! assert!(stale.is_none());
//! // A second driver on the same directory is refused while the first holds it.
//! let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
//! assert!(err.contains("another driver"), "{err}");
//! drop(lock);
//! assert!(RunLock::acquire(dir.path()).is_ok());
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the lock inside the run directory.
pub const LOCK_FILE: &str = "driver.lock";

/// Who holds a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Process id of the holder.
    pub pid: u32,
    /// Host name of the holder (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
    pub host: String,
    /// Start time of the holder in clock ticks since boot (Linux), to tell a reused PID apart.
    #[serde(default)]
    pub start_ticks: Option<u64>,
}

impl LockInfo {
    /// This process.
    pub fn current() -> Self {
        let pid = std::process::id();
        LockInfo {
            pid,
            host: host_name(),
            start_ticks: start_ticks(pid),
        }
    }

    /// Whether the holder is gone: same host, and no process `pid`, or one that started at
    /// another time. A holder on another host is never judged stale.
    pub fn is_stale(&self) -> bool {
        if self.host != host_name() {
            return false;
        }
        if !Path::new("/proc").join(self.pid.to_string()).exists() {
            // Where /proc does not exist (non-Linux), nothing is known: not stale.
            return Path::new("/proc/self").exists();
        }
        match (self.start_ticks, start_ticks(self.pid)) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        }
    }
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PID {} on host {}", self.pid, self.host)
    }
}

/// The host name: `/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `unknown`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`, if readable.
fn start_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A held driver lock; dropping it removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    info: LockInfo,
}

impl RunLock {
    /// Takes `<dir>/driver.lock` for this process. Returns the lock and, when a stale lock was
    /// taken over, its former holder. Err(RunLocked) naming the holder when a live driver (or
    /// one on another host) holds it; Err(Io) when the directory is not writable.
    pub fn acquire(dir: &Path) -> Result<(RunLock, Option<LockInfo>)> {
        Self::acquire_as(dir, LockInfo::current())
    }

    /// [`acquire`](Self::acquire) for a given holder (for tests).
    pub fn acquire_as(dir: &Path, info: LockInfo) -> Result<(RunLock, Option<LockInfo>)> {
        let path = dir.join(LOCK_FILE);
        let io = |p: &Path, e: std::io::Error| Error::Io {
            path: p.display().to_string(),
            err: e,
        };
        let tmp = dir.join(format!(".{LOCK_FILE}.{}.tmp", info.pid));
        let body = serde_json::to_string(&info).expect("serializes") + "\n";
        std::fs::write(&tmp, body).map_err(|e| io(&tmp, e))?;
        let mut taken_over = None;
        // Two passes at most: the second after moving a stale lock away.
        let result = (|| {
            for _ in 0..2 {
                match std::fs::hard_link(&tmp, &path) {
                    Ok(()) => {
                        return Ok(RunLock {
                            path: path.clone(),
                            info: info.clone(),
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io(&path, e)),
                }
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    // Removed in between by its holder: try again.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&path, e)),
                };
                let holder: LockInfo = serde_json::from_str(&text).map_err(|e| Error::Format {
                    path: path.display().to_string(),
                    line: 0,
                    msg: format!(
                        "unreadable driver lock ({e}); remove it if no driver runs on this directory"
                    ),
                })?;
                if !holder.is_stale() {
                    return Err(Error::RunLocked {
                        path: path.display().to_string(),
                        holder: holder.to_string(),
                    });
                }
                // Move the stale lock aside, then check that what moved is the lock judged
                // stale (not a fresh one another driver wrote in between); else put it back.
                let aside = dir.join(format!(".{LOCK_FILE}.stale.{}", info.pid));
                match std::fs::rename(&path, &aside) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&path, e)),
                }
                let moved = std::fs::read_to_string(&aside).unwrap_or_default();
                if moved != text {
                    let _ = std::fs::hard_link(&aside, &path);
                    let _ = std::fs::remove_file(&aside);
                    let now: Option<LockInfo> = serde_json::from_str(&moved).ok();
                    return Err(Error::RunLocked {
                        path: path.display().to_string(),
                        holder: now.map_or_else(|| "another driver".into(), |h| h.to_string()),
                    });
                }
                let _ = std::fs::remove_file(&aside);
                tracing::warn!(lock = %path.display(), %holder, "taking over a stale driver lock");
                taken_over = Some(holder);
            }
            Err(Error::RunLocked {
                path: path.display().to_string(),
                holder: "another driver (the lock changed while it was taken over)".into(),
            })
        })();
        let _ = std::fs::remove_file(&tmp);
        result.map(|l| (l, taken_over))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The holder written into it (this process).
    pub fn info(&self) -> &LockInfo {
        &self.info
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Remove the file only while it is still ours.
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str::<LockInfo>(&t).ok())
            .is_some_and(|h| h == self.info);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_holder_refuses_a_stale_one_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let (lock, stale) = RunLock::acquire(dir.path()).unwrap();
        assert!(stale.is_none());
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        let held: LockInfo = serde_json::from_str(&text).unwrap();
        assert_eq!(held, LockInfo::current());
        assert!(!held.is_stale(), "this process is alive");
        let e = RunLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(e, Error::RunLocked { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("PID {} on host", std::process::id())),
            "{e}"
        );
        // Leaked (as a SIGKILLed driver would): the file stays.
        std::mem::forget(lock);

        // The same PID with another start time is a reused PID: stale.
        let mut reused = LockInfo::current();
        reused.start_ticks = reused.start_ticks.map(|t| t + 1);
        if reused.start_ticks.is_some() {
            assert!(reused.is_stale());
        }
        // A PID that does not exist on this host: stale, taken over and reported.
        let dead = LockInfo {
            pid: u32::MAX - 7,
            host: host_name(),
            start_ticks: Some(1),
        };
        assert!(dead.is_stale());
        std::fs::write(
            dir.path().join(LOCK_FILE),
            serde_json::to_string(&dead).unwrap(),
        )
        .unwrap();
        let (lock, stale) = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(stale, Some(dead));
        assert_eq!(lock.info(), &LockInfo::current());
        drop(lock);
        assert!(!dir.path().join(LOCK_FILE).exists());
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        // A holder on another host is never judged stale (its processes are not visible here).
        let remote = LockInfo {
            pid: u32::MAX - 7,
            host: format!("{}-elsewhere", host_name()),
            start_ticks: None,
        };
        std::fs::write(
            dir.path().join(LOCK_FILE),
            serde_json::to_string(&remote).unwrap(),
        )
        .unwrap();
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("-elsewhere"), "{e}");
        // Garbage in the lock file is an error, not a silent takeover.
        std::fs::write(dir.path().join(LOCK_FILE), "{").unwrap();
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("unreadable driver lock"), "{e}");
    }

    #[test]
    fn dropping_a_lock_that_is_no_longer_ours_leaves_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (lock, _) = RunLock::acquire(dir.path()).unwrap();
        let other = LockInfo {
            pid: 1,
            host: "other".into(),
            start_ticks: None,
        };
        std::fs::write(lock.path(), serde_json::to_string(&other).unwrap()).unwrap();
        drop(lock);
        assert!(dir.path().join(LOCK_FILE).exists());
    }
}
