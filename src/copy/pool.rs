//! A work-stealing pool over crossbeam-deque, shared by the tree copy and the tree removal.
//!
//! Each worker has a LIFO local queue (so a walk goes depth-first and keeps few directories open)
//! and steals from the global injector and from the others when it runs dry. A task may push more
//! tasks; the pool ends when no task is queued or running, or as soon as `stop` is set.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam::deque::{Injector, Steal, Stealer, Worker};

/// Run `work` on every task `seed` pushes, and on every task those push, with `threads` workers.
pub(super) fn run<T: Send>(
    threads: usize,
    name: &str,
    stop: &AtomicBool,
    seed: impl FnOnce(&dyn Fn(T)),
    work: impl Fn(T, &dyn Fn(T)) + Sync,
) {
    let injector = Injector::new();
    // Tasks pushed and not yet finished; zero means the pool is done.
    let outstanding = AtomicUsize::new(0);
    seed(&|task| {
        outstanding.fetch_add(1, Ordering::AcqRel);
        injector.push(task);
    });
    let workers: Vec<Worker<T>> = (0..threads.max(1)).map(|_| Worker::new_lifo()).collect();
    let stealers: Vec<Stealer<T>> = workers.iter().map(Worker::stealer).collect();
    std::thread::scope(|scope| {
        for (index, local) in workers.into_iter().enumerate() {
            let (injector, stealers, outstanding, work) =
                (&injector, &stealers, &outstanding, &work);
            std::thread::Builder::new()
                .name(format!("goldclone-{name}-{index}"))
                .spawn_scoped(scope, move || {
                    let push = |task: T| {
                        outstanding.fetch_add(1, Ordering::AcqRel);
                        local.push(task);
                    };
                    let mut idle_rounds = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let task = local.pop().or_else(|| {
                            std::iter::repeat_with(|| {
                                injector.steal_batch_and_pop(&local).or_else(|| {
                                    stealers.iter().map(Stealer::steal).collect::<Steal<T>>()
                                })
                            })
                            .find(|s| !s.is_retry())
                            .and_then(Steal::success)
                        });
                        match task {
                            Some(task) => {
                                idle_rounds = 0;
                                let _done = TaskDone { outstanding, stop };
                                work(task, &push);
                            }
                            None if outstanding.load(Ordering::Acquire) == 0 => return,
                            None => {
                                idle_rounds += 1;
                                if idle_rounds < 64 {
                                    std::thread::yield_now();
                                } else {
                                    std::thread::sleep(Duration::from_micros(200));
                                }
                            }
                        }
                    }
                    // Stopped: queued tasks are dropped with the queues.
                })
                .expect("spawning a worker thread");
        }
    });
}

/// Marks a task finished when dropped, also when the task panics: then the pool stops too, so
/// the other workers return instead of waiting forever for a count that never reaches zero, and
/// the scope hands the panic to the caller.
struct TaskDone<'a> {
    outstanding: &'a AtomicUsize,
    stop: &'a AtomicBool,
}

impl Drop for TaskDone<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.stop.store(true, Ordering::Relaxed);
        }
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_task_stops_the_pool_and_reaches_the_caller() {
        let stop = AtomicBool::new(false);
        let done = AtomicUsize::new(0);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(
                2,
                "test",
                &stop,
                |push| (0..100u32).for_each(push),
                |n, push| {
                    if n == 7 {
                        panic!("task 7 fails");
                    }
                    if n < 50 {
                        push(n + 100);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                },
            )
        }));
        assert!(outcome.is_err(), "the task's panic must reach the caller");
        assert!(stop.load(Ordering::Relaxed));
    }

    #[test]
    fn every_pushed_task_runs_once() {
        let stop = AtomicBool::new(false);
        let sum = AtomicUsize::new(0);
        run(
            3,
            "test",
            &stop,
            |push| (1..=10usize).for_each(push),
            |n, push| {
                sum.fetch_add(n, Ordering::Relaxed);
                if n <= 10 {
                    push(n * 100);
                }
            },
        );
        assert_eq!(sum.load(Ordering::Relaxed), 55 + 5500);
    }
}
