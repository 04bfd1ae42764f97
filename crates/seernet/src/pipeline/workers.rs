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

/// The order to start jobs of costs `costs` in: largest first (ties in item order), so that
/// the last jobs of a batch are short and no worker idles long beside the last one (the
/// longest-processing-time rule).
pub(crate) fn largest_first(costs: &[u64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(costs[i]));
    order
}

/// [`largest_first`] by the MACs of `policies` (a fine-tune's time follows them). Err(Policy)
/// for a policy outside `space`.
pub(crate) fn largest_networks_first<'p>(
    space: &seer_policy::SearchSpace,
    policies: impl Iterator<Item = &'p seer_policy::Policy>,
) -> Result<Vec<usize>> {
    let macs = policies
        .map(|p| Ok(space.cost(p)?.total_macs))
        .collect::<Result<Vec<u64>>>()?;
    Ok(largest_first(&macs))
}

/// `9 labels on 2 workers of 1 thread each`, for the run log (`what`: `labels`, ...).
pub(crate) fn describe(n: usize, what: &str, workers: usize, threads: usize) -> String {
    format!(
        "{n} {what} on {workers} workers of {threads} thread{} each",
        if threads == 1 { "" } else { "s" }
    )
}

/// Runs `job` on every item of `items` on `workers` threads (each in its own rayon pool of
/// `threads` threads; with one worker, on the caller's thread and pool), starting them in
/// `start_order` (a permutation of the item indices, e.g. [`largest_first`]; one worker
/// takes them in item order).
///
/// Each successful result goes to `arrived(i, &result, waits)` on the calling thread as soon
/// as its job finishes, in the order the jobs finish; `waits` tells whether an earlier item is
/// still unfinished. That is for what must not wait for earlier items: saving a finished job
/// so that a killed run keeps it, logging progress. Then it goes to `done` on the calling
/// thread, in item order, as soon as it and every earlier one are finished. `tick` runs on
/// the calling thread about every 200 ms while jobs run (progress from counters the jobs
/// update).
///
/// After the first error (of a job, `arrived` or `done`) no new job starts; jobs already
/// running finish, results before the failed item are still handed to `done`, later ones are
/// dropped, and the error of the earliest failed item is returned. Err([`Error::Config`]) when
/// a worker's thread pool cannot be built.
#[allow(clippy::too_many_arguments)]
pub(crate) fn map_ordered<T, R>(
    items: &[T],
    workers: usize,
    threads: usize,
    start_order: &[usize],
    job: impl Fn(&T) -> Result<R> + Sync,
    mut arrived: impl FnMut(usize, &R, bool) -> Result<()>,
    mut done: impl FnMut(usize, R) -> Result<()>,
    mut tick: impl FnMut(),
) -> Result<()>
where
    T: Sync,
    R: Send,
{
    {
        let mut sorted = start_order.to_vec();
        sorted.sort_unstable();
        if !sorted.iter().copied().eq(0..items.len()) {
            return Err(Error::Config {
                what: "worker start order".into(),
                msg: format!("not a permutation of the {} items", items.len()),
            });
        }
    }
    if workers <= 1 || items.len() <= 1 {
        for (i, it) in items.iter().enumerate() {
            let r = job(it)?;
            arrived(i, &r, false)?;
            done(i, r)?;
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
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&i) = start_order.get(k) else { break };
                    let it = &items[i];
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
            let r = match r {
                Ok(v) if failed.is_none() => match arrived(i, &v, i != expected) {
                    Ok(()) => Ok(v),
                    Err(e) => {
                        stop.store(true, Ordering::SeqCst);
                        Err(e)
                    }
                },
                r => r,
            };
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
        // A job that failed after a gap (an earlier item had not started when the workers
        // stopped): its error, the earliest such.
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
    fn largest_first_orders_by_cost_then_item() {
        assert_eq!(largest_first(&[3, 9, 3, 12, 0]), vec![3, 1, 0, 2, 4]);
        assert!(largest_first(&[]).is_empty());
    }

    #[test]
    fn a_start_order_that_is_not_a_permutation_is_refused() {
        for order in [vec![0, 0, 1], vec![0, 1], vec![0, 1, 3]] {
            let e = map_ordered(
                &[1, 2, 3],
                2,
                1,
                &order,
                |&x| Ok(x),
                |_, _, _| Ok(()),
                |_, _| Ok(()),
                || {},
            )
            .unwrap_err();
            assert!(e.to_string().contains("not a permutation"), "{e}");
        }
    }

    #[test]
    fn a_failure_before_an_unstarted_item_is_returned() {
        // Started from the end: item 30 fails while items 0..30 never start.
        let items: Vec<usize> = (0..40).collect();
        let order: Vec<usize> = (0..40).rev().collect();
        let mut got = Vec::new();
        let err = map_ordered(
            &items,
            2,
            1,
            &order,
            |&x| if x == 30 { Err(fail("item 30")) } else { Ok(x) },
            |_, _, _| Ok(()),
            |i, _| {
                got.push(i);
                Ok(())
            },
            || {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("item 30"), "{err}");
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn describe_counts() {
        assert_eq!(
            describe(9, "labels", 2, 1),
            "9 labels on 2 workers of 1 thread each"
        );
        assert_eq!(
            describe(3, "jobs", 4, 4),
            "3 jobs on 4 workers of 4 threads each"
        );
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

    /// `done` sees every result in item order; `arrived` sees each one once, as its job
    /// finishes and before `done` does, with `waits` set exactly when an earlier item had not
    /// yet been handed to `done` (with workers started last-first, most of them).
    #[test]
    fn results_arrive_in_item_order_with_the_workers_pools() {
        let items: Vec<u64> = (0..23).collect();
        for (workers, threads) in [(1, 1), (2, 1), (3, 2), (5, 1)] {
            let seen = Mutex::new(Vec::new());
            let mut got = Vec::new();
            let arrivals = std::cell::RefCell::new(Vec::new());
            // Started last-first: every result waits for the earlier ones.
            let order: Vec<usize> = (0..items.len()).rev().collect();
            map_ordered(
                &items,
                workers,
                threads,
                &order,
                |&x| {
                    // Later items finish first now and then.
                    std::thread::sleep(std::time::Duration::from_millis((23 - x) % 4));
                    seen.lock().unwrap().push(rayon::current_num_threads());
                    Ok(x * x)
                },
                |i, &r, waits| {
                    assert_eq!(r, (i * i) as u64);
                    arrivals.borrow_mut().push((i, waits));
                    Ok(())
                },
                |i, r| {
                    let arrivals = arrivals.borrow();
                    assert!(
                        arrivals.iter().any(|&(a, _)| a == i),
                        "{i} done before it arrived"
                    );
                    // An item arrived without waiting exactly when all before it were done.
                    let waited = arrivals.iter().find(|&&(a, _)| a == i).unwrap().1;
                    let before_done = got.len() == i;
                    assert!(before_done, "done out of order");
                    if !waited {
                        assert!(
                            arrivals.iter().position(|&(a, _)| a == i).unwrap()
                                == arrivals.len() - 1,
                            "{i} arrived without waiting but was not handed on at once"
                        );
                    }
                    got.push((i, r));
                    Ok(())
                },
                || {},
            )
            .unwrap();
            let want: Vec<(usize, u64)> = (0..23).map(|i| (i as usize, i * i)).collect();
            assert_eq!(got, want, "workers {workers}");
            let arrivals = arrivals.into_inner();
            let mut arrived: Vec<usize> = arrivals.iter().map(|&(i, _)| i).collect();
            arrived.sort_unstable();
            assert_eq!(arrived, (0..23).collect::<Vec<_>>(), "each arrives once");
            if workers > 1 {
                assert!(seen.lock().unwrap().iter().all(|&t| t == threads));
                // Item 22 starts first and finishes before item 0: it waited.
                assert!(
                    arrivals.iter().any(|&(_, w)| w),
                    "workers {workers}: none waited"
                );
            } else {
                assert!(
                    arrivals.iter().all(|&(_, w)| !w),
                    "one worker: in item order"
                );
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
            &(0..40).collect::<Vec<_>>(),
            |&x| {
                started.fetch_add(1, Ordering::SeqCst);
                if x == 5 {
                    Err(fail("item 5"))
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    Ok(x)
                }
            },
            |_, _, _| Ok(()),
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
            &(0..40).collect::<Vec<_>>(),
            |&x| {
                started.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(2));
                Ok(x)
            },
            |_, _, _| Ok(()),
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
