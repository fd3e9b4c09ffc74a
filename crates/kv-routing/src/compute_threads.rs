//! Where the host side of a forward pass runs.
//!
//! flex computes on rayon's pool. Called from a thread outside the pool (a program's main
//! thread), every parallel op hands its work to the pool's threads and sleeps until they are
//! done: a SmolLM2-135M decode step makes a few hundred such hand-offs, and they cost a fifth of
//! a batch-1 step (scheduler and wake-up time in its profile). Run from one of the pool's own
//! threads, the same ops split their work with the other threads by work stealing instead, and
//! the calling thread computes its share. [`run`] moves a block loop onto the pool when the
//! backend is flex (feature `flex`) and it is not on the pool already; for every other backend
//! it runs the work where it is.

use burn::tensor::backend::Backend;

/// Runs `work` on rayon's pool when `B` is flex and the caller is outside the pool; otherwise
/// on the calling thread.
// Without the `flex` feature no backend is moved, and `B` only keeps the call sites the same.
#[cfg_attr(not(feature = "flex"), allow(clippy::extra_unused_type_parameters))]
pub(crate) fn run<B: Backend, R: Send>(work: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "flex")]
    if std::any::TypeId::of::<B>() == std::any::TypeId::of::<burn_flex::Flex>()
        && rayon::current_thread_index().is_none()
    {
        return rayon::scope(|_| work());
    }
    work()
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn_flex::Flex;

    #[test]
    fn flex_work_runs_on_the_pool_and_other_backends_stay_on_the_caller() {
        assert!(
            rayon::current_thread_index().is_none(),
            "a test thread is outside the pool"
        );
        assert!(run::<Flex, _>(|| rayon::current_thread_index().is_some()));
        // Autodiff<Flex> (training) keeps the caller's thread, as every other backend does.
        assert!(run::<burn_autodiff::Autodiff<Flex>, _>(|| {
            rayon::current_thread_index().is_none()
        }));
        // Already on the pool: run in place, not a second hop.
        let nested = rayon::scope(|_| {
            let outer = rayon::current_thread_index();
            run::<Flex, _>(|| rayon::current_thread_index() == outer)
        });
        assert!(nested);
    }
}
