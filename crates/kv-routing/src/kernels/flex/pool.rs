//! Where the host side of a forward pass runs on flex.
//!
//! flex computes on rayon's pool. Called from a thread outside the pool (a program's main
//! thread), every parallel op hands its work to the pool's threads and sleeps until they are
//! done: a SmolLM2-135M decode step makes a few hundred such hand-offs, and they cost a fifth of
//! a batch-1 step (scheduler and wake-up time in its profile). Run from one of the pool's own
//! threads, the same ops split their work with the other threads by work stealing instead, and
//! the calling thread computes its share.

/// Runs `work` on rayon's pool when the caller is outside it; in place when it is on it already
/// (no second hop).
pub(crate) fn run_on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_none() {
        return rayon::scope(|_| work());
    }
    work()
}

#[cfg(test)]
mod tests {
    use burn_flex::Flex;

    use crate::kernels::on_compute_threads;

    #[test]
    fn flex_work_runs_on_the_pool_and_other_backends_stay_on_the_caller() {
        assert!(
            rayon::current_thread_index().is_none(),
            "a test thread is outside the pool"
        );
        assert!(on_compute_threads::<Flex, _>(|| {
            rayon::current_thread_index().is_some()
        }));
        // Autodiff<Flex> (training) keeps the caller's thread, as every other backend does.
        assert!(on_compute_threads::<burn_autodiff::Autodiff<Flex>, _>(
            || { rayon::current_thread_index().is_none() }
        ));
        // Already on the pool: run in place, not a second hop.
        let nested = rayon::scope(|_| {
            let outer = rayon::current_thread_index();
            on_compute_threads::<Flex, _>(|| rayon::current_thread_index() == outer)
        });
        assert!(nested);
    }
}
