//! Two independent passes at once on the compute threads of the backend that runs them.
//!
//! On flex (plain or under Burn's autodiff) every large product is split across rayon's pool,
//! and at the end of each split one thread waits for the other: on 2 cores about a sixth of a
//! training pass is such waiting (docs/benchmarks.md, "Where the retrofit recipe's step goes").
//! Two passes that do not depend on each other, run with [`join_passes`], fill those waits with
//! each other's work: a distillation step on SmolLM2 (the student's and the teacher's passes
//! joined) took 1.06-1.40x less time, median 1.11x, in 5 alternated rounds on 2 cores, for
//! about 15% more peak memory (each thread allocates from its own arena).
//!
//! # Contract
//! `join_passes::<B>(a, b)` returns `(a(), b())`. On flex and `Autodiff<Flex>` (f32 or any
//! other float) the two run at once on rayon's pool; on every other backend one after the other
//! on the calling thread. Either way each closure computes what it would alone: flex's kernels
//! give the same bits on whichever thread they run, so a run's losses, gradients and
//! checkpoints do not depend on this (tested below, and by the trainer's bit-exact resume).
//! A panic in either closure reaches the caller.

use burn::tensor::backend::Backend;

/// `(a(), b())`, the two at once where `B` computes on a thread pool (see the module contract).
///
/// `B` is the backend whose compute threads run them; a training step passes its autodiff
/// backend, whose inner backend runs the frozen teacher.
pub fn join_passes<B: Backend, RA: Send, RB: Send>(
    a: impl FnOnce() -> RA + Send,
    b: impl FnOnce() -> RB + Send,
) -> (RA, RB) {
    crate::kernels::join_on_compute_threads::<B, RA, RB>(a, b)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::tensor::Tensor;
    use burn_autodiff::Autodiff;
    use burn_flex::Flex;

    use super::join_passes;
    use crate::{CachePlan, RoutedTransformer, RoutedTransformerConfig};

    type Diff = Autodiff<Flex>;

    fn model<B: burn::tensor::backend::Backend>() -> RoutedTransformer<B> {
        RoutedTransformerConfig::new(61, 64, 4, 4, 96)
            .with_n_kv_heads(Some(2))
            .with_max_seq_len(128)
            .init_seeded(7, &Default::default())
            .expect("a valid config")
    }

    fn values<B: burn::tensor::backend::Backend>(t: Tensor<B, 3>) -> Vec<f32> {
        t.into_data().to_vec().expect("f32 logits")
    }

    /// A student pass under autodiff (every:2) and a teacher pass on the plain backend (full
    /// plan), joined: the same bits as each alone, and the student's gradient too.
    #[test]
    fn joined_passes_compute_what_each_computes_alone() {
        let student = model::<Diff>();
        let teacher = model::<Flex>();
        let tokens: Vec<Vec<u32>> = (0..2)
            .map(|b| (0..100).map(|i| (i * 7 + b * 13) % 61).collect())
            .collect();
        let every2 = CachePlan::every_kth(4, 2).unwrap().route();
        let full = CachePlan::full(4).unwrap().route();
        let student_pass = || student.forward_tokens(&tokens, &every2).unwrap();
        let teacher_pass = || teacher.forward_tokens(&tokens, &full).unwrap();

        let (alone_student, alone_teacher) = (student_pass(), teacher_pass());
        let (joined_student, joined_teacher) =
            join_passes::<Diff, _, _>(student_pass, teacher_pass);
        assert_eq!(values(joined_teacher), values(alone_teacher));

        let gradient = |logits: Tensor<Diff, 3>| {
            let grads = logits.clone().powi_scalar(2).sum().backward();
            let embedding = student.embedding.weight.val();
            let grad: Vec<f32> = embedding
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec()
                .unwrap();
            (values(logits.inner()), grad)
        };
        assert_eq!(gradient(joined_student), gradient(alone_student));
    }

    /// The two closures run on the pool for flex, plain or under autodiff, and on the caller
    /// for any other backend (here autodiff with another checkpointing strategy, a type the
    /// flex kernels do not take).
    #[test]
    fn flex_joins_on_the_pool_and_other_backends_run_on_the_caller() {
        let on_pool = |(a, b): (Option<usize>, Option<usize>)| a.is_some() && b.is_some();
        assert!(
            rayon::current_thread_index().is_none(),
            "a test thread is outside the pool"
        );
        assert!(on_pool(join_passes::<Diff, _, _>(
            rayon::current_thread_index,
            rayon::current_thread_index
        )));
        assert!(on_pool(join_passes::<Flex, _, _>(
            rayon::current_thread_index,
            rayon::current_thread_index
        )));
        type Other = Autodiff<Flex, burn_autodiff::checkpoint::strategy::BalancedCheckpointing>;
        assert_eq!(
            join_passes::<Other, _, _>(rayon::current_thread_index, rayon::current_thread_index),
            (None, None)
        );
    }
}
