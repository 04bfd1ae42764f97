//! Independent fine-tunes (labels, final fine-tunes) run side by side (`--workers N`): each
//! worker is a thread with its own rayon pool, results come back to the calling thread in
//! input order. On a small network one fine-tune on one core is more efficient than one
//! fine-tune on two (a ResNet-20 label: 25.4 s on one thread, 15.2 s on two; two one-thread
//! labels side by side: 11.9 s per label, docs/benchmarks.md "Label workers"), because much of a
//! training step (optimizer updates, gradient accumulation, data batches, small layers) does
//! not split across threads. The kernels give the same bits on any thread count, so a label or
//! a fine-tune does not depend on the number of workers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use crate::error::{Error, Result};

/// How `n` independent jobs share the machine: `workers` threads of `threads` rayon threads
/// each. `requested` workers (0: one per available core) are capped at `n` (an explicit
/// request is not capped at the cores: the user's choice); the cores are shared out evenly,
/// at least one thread each. `(1, cores)` when one worker
/// remains: the jobs run one after another on the caller's pool, as without workers.
pub(crate) fn plan(requested: usize, n: usize) -> (usize, usize) {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    plan_for(requested, n, cores)
}

/// [`plan`] on a machine of `cores` cores.
fn plan_for(requested: usize, n: usize, cores: usize) -> (usize, usize) {
    let cores = cores.max(1);
    let want = if requested == 0 { cores } else { requested };
    let workers = want.min(n).max(1);
    (workers, (cores / workers).max(1))
}

/// Runs `job` on every item of `items` on `workers` threads (each in its own rayon pool of
/// `threads` threads; with one worker, on the caller's thread and pool) and hands each result
/// to `done` on the calling thread, in item order, as soon as it and every earlier one are
/// finished; `tick` runs on the calling thread about every 200 ms while jobs run (progress
/// from counters the jobs update). After the first error (of a job or of `done`) no new job starts; jobs already
/// running finish, results before the failed item are still handed to `done`, later ones are
/// dropped, and the error of the earliest failed item is returned. Err([`Error::Config`]) when
/// a worker's thread pool cannot be built.
pub(crate) fn map_ordered<T, R>(
    items: &[T],
    workers: usize,
    threads: usize,
    job: impl Fn(&T) -> Result<R> + Sync,
    mut done: impl FnMut(usize, R) -> Result<()>,
    mut tick: impl FnMut(),
) -> Result<()>
where
    T: Sync,
    R: Send,
{
    if workers <= 1 || items.len() <= 1 {
        for (i, it) in items.iter().enumerate() {
            done(i, job(it)?)?;
            tick();
        }
        return Ok(());
    }
    let pools = (0..workers)
        .map(|w| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads.max(1))
                .thread_name(move |t| format!("seernet-worker-{w}-{t}"))
                .build()
                .map_err(|e| Error::Config {
                    what: "--workers".into(),
                    msg: format!("cannot start worker {w}'s thread pool: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(usize, Result<R>)>();
    std::thread::scope(|s| {
        for pool in &pools {
            let (tx, next, stop, job) = (tx.clone(), &next, &stop, &job);
            s.spawn(move || {
                loop {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(it) = items.get(i) else { break };
                    let r = pool.install(|| job(it));
                    if r.is_err() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Results wait here until every earlier item's result has been handed on.
        let mut waiting: BTreeMap<usize, Result<R>> = BTreeMap::new();
        let mut expected = 0;
        let mut failed: Option<(usize, Error)> = None;
        loop {
            let (i, r) = match rx.recv_timeout(std::time::Duration::from_millis(200)) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    tick();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            tick();
            waiting.insert(i, r);
            while let Some(r) = waiting.remove(&expected) {
                let i = expected;
                expected += 1;
                if failed.is_some() {
                    continue;
                }
                if let Err(e) = r.and_then(|v| done(i, v)) {
                    stop.store(true, Ordering::SeqCst);
                    failed = Some((i, e));
                }
            }
        }
        // A job that failed after a gap (an earlier item never ran: the workers stopped).
        if failed.is_none()
            && let Some((i, Err(e))) = waiting.into_iter().find(|(_, r)| r.is_err())
        {
            failed = Some((i, e));
        }
        match failed {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn fail(msg: &str) -> Error {
        Error::Config {
            what: "test".into(),
            msg: msg.into(),
        }
    }

    #[test]
    fn plan_shares_the_cores() {
        assert_eq!(plan_for(0, 10, 2), (2, 1));
        assert_eq!(plan_for(0, 1, 2), (1, 2), "one job takes every core");
        assert_eq!(plan_for(1, 10, 16), (1, 16));
        assert_eq!(plan_for(4, 10, 16), (4, 4));
        assert_eq!(plan_for(3, 10, 16), (3, 5));
        assert_eq!(plan_for(32, 10, 16), (10, 1), "capped at the jobs");
        assert_eq!(plan_for(8, 10, 2), (8, 1), "as asked");
        assert_eq!(plan_for(0, 0, 0), (1, 1));
    }

    #[test]
    fn results_arrive_in_item_order_with_the_workers_pools() {
        let items: Vec<u64> = (0..23).collect();
        for (workers, threads) in [(1, 1), (2, 1), (3, 2), (5, 1)] {
            let seen = Mutex::new(Vec::new());
            let mut got = Vec::new();
            map_ordered(
                &items,
                workers,
                threads,
                |&x| {
                    // Later items finish first now and then.
                    std::thread::sleep(std::time::Duration::from_millis((23 - x) % 4));
                    seen.lock().unwrap().push(rayon::current_num_threads());
                    Ok(x * x)
                },
                |i, r| {
                    got.push((i, r));
                    Ok(())
                },
                || {},
            )
            .unwrap();
            let want: Vec<(usize, u64)> = (0..23).map(|i| (i as usize, i * i)).collect();
            assert_eq!(got, want, "workers {workers}");
            if workers > 1 {
                assert!(seen.lock().unwrap().iter().all(|&t| t == threads));
            }
        }
    }

    #[test]
    fn a_failed_job_stops_the_rest_and_earlier_results_are_kept() {
        let items: Vec<usize> = (0..40).collect();
        let started = AtomicUsize::new(0);
        let mut got = Vec::new();
        let err = map_ordered(
            &items,
            2,
            1,
            |&x| {
                started.fetch_add(1, Ordering::SeqCst);
                if x == 5 {
                    Err(fail("item 5"))
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    Ok(x)
                }
            },
            |i, r| {
                got.push((i, r));
                Ok(())
            },
            || {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("item 5"), "{err}");
        assert_eq!(got, (0..5).map(|i| (i, i)).collect::<Vec<_>>());
        assert!(
            started.load(Ordering::SeqCst) < 10,
            "no new job after the failure"
        );
    }

    #[test]
    fn a_failing_consumer_stops_the_workers() {
        let items: Vec<usize> = (0..40).collect();
        let started = AtomicUsize::new(0);
        let err = map_ordered(
            &items,
            2,
            1,
            |&x| {
                started.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(2));
                Ok(x)
            },
            |i, _| {
                if i == 3 {
                    Err(fail("store full"))
                } else {
                    Ok(())
                }
            },
            || {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("store full"), "{err}");
        assert!(started.load(Ordering::SeqCst) < 12);
    }
}
