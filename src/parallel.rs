//! The one worker pool: a few threads taking indices in order from a shared
//! counter, each with buffers of its own. Used by the deploy engine, disk
//! verification and repository checks.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Runs `work(&mut state, index)` for every index of `range` on `jobs` threads
/// (at least one), each thread with its own `state` made by `init`. Indices are
/// handed out in increasing order; after the first error no new index is handed
/// out, and that error is returned once every thread has stopped.
pub fn for_each_index<S, E: Send>(
    range: Range<usize>,
    jobs: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, usize) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let next = AtomicUsize::new(range.start);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                let mut state = init();
                while !stop.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= range.end {
                        break;
                    }
                    if let Err(e) = work(&mut state, index) {
                        stop.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_once_and_the_first_error_stops_the_rest() {
        let seen = Mutex::new(Vec::new());
        let r: Result<(), ()> = for_each_index(
            3..40,
            4,
            || 0usize,
            |count, i| {
                *count += 1;
                seen.lock().unwrap().push(i);
                Ok(())
            },
        );
        assert!(r.is_ok());
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, (3..40).collect::<Vec<_>>());

        let done = AtomicUsize::new(0);
        let r = for_each_index(
            0..1000,
            3,
            || (),
            |_, i| {
                done.fetch_add(1, Ordering::Relaxed);
                if i == 10 { Err(i) } else { Ok(()) }
            },
        );
        assert_eq!(r, Err(10));
        assert!(done.load(Ordering::Relaxed) < 1000);
        assert_eq!(
            for_each_index(0..0, 0, || (), |_, _| Err::<(), _>(())),
            Ok(())
        );
    }
}
