//! [`RoutedLm`]: a [`RoutedTransformer`] as a language model that `burn-train`'s `Learner`
//! trains with stochastic KV routing.
//!
//! # Contract
//! - The route of a training batch is `router.route_for_step(batch.step)`: a pure function of
//!   the router's seed and the run's optimizer step, so every device and every accumulated
//!   micro-batch of one step uses the same route (the paper's one draw per step), whatever the
//!   number of devices, and a resumed run draws the routes the uninterrupted one would.
//! - A micro-batch's loss is its *summed* next-token cross-entropy divided by the targets of the
//!   whole step ([`StepBatch::targets_per_step`]). Burn sums the gradients of all devices and
//!   micro-batches of a step, so the sum is the gradient of the step's mean loss: one step on
//!   two devices with batch `B` each is one step on one device with batch `2B`.
//! - Clipping is the optimizer's ([`super::RoutedLmOptimizer`]), as in Burn.
//! - Validation runs under one fixed route (the full plan unless set otherwise), and measures
//!   cross-entropy whatever the training loss, so that recipes compare.
//! - With a teacher ([`RoutedLm::distilled_from`]) the training loss is the distillation loss
//!   of [`crate::distillation`]: the teacher runs under the full plan on the inner backend, is
//!   never visited by the optimizer (a skipped field) and never saved with the model. With a
//!   hidden-state weight, sharing steps run both passes recorded (their states between blocks
//!   kept) instead of plain. The student's and the teacher's passes run at once on flex
//!   ([`kv_routing::join_passes`]: the same bits as one after the other).

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use burn_train::{InferenceStep, TrainOutput, TrainStep};
use kv_routing::{CachePlan, Route, RoutedTransformer, StochasticRouter};

use super::output::StepOutput;
use super::step_batch::StepBatch;
use super::step_losses::StepLosses;
use crate::distillation::{
    distillation_losses, focused_losses, hidden_state_distances, Distillation,
};
use crate::error::{Result, TrainError};
use crate::loss::token_losses;

/// A routed transformer with its route stream, trainable by Burn's `Learner`.
#[derive(Module, Debug)]
pub struct RoutedLm<B: Backend> {
    /// The model being trained.
    pub transformer: RoutedTransformer<B>,
    #[module(skip)]
    router: StochasticRouter,
    #[module(skip)]
    validation_route: Route,
    /// Where each training step's share of its loss goes, when a step observer reads it.
    #[module(skip)]
    losses: Option<StepLosses>,
    /// The frozen model distilled from, with no parameter requiring a gradient.
    #[module(skip)]
    teacher: Option<RoutedTransformer<B>>,
    #[module(skip)]
    distillation: Option<Distillation>,
}

impl<B: Backend> RoutedLm<B> {
    /// `transformer` trained under `router`'s routes, validated under the full plan.
    pub fn new(transformer: RoutedTransformer<B>, router: StochasticRouter) -> Result<Self> {
        let n_layers = transformer.n_layers();
        if router.n_layers() != n_layers {
            return Err(TrainError::Config(format!(
                "the router routes {} layers, the model has {n_layers}",
                router.n_layers()
            )));
        }
        Ok(Self {
            transformer,
            router,
            validation_route: CachePlan::full(n_layers)?.route(),
            losses: None,
            teacher: None,
            distillation: None,
        })
    }

    /// Trains by distilling `teacher` (frozen here: its parameters stop requiring gradients) as
    /// `settings` say. The teacher must share the student's vocabulary.
    pub fn distilled_from(
        mut self,
        teacher: RoutedTransformer<B>,
        settings: Distillation,
    ) -> Result<Self> {
        settings.validate()?;
        if teacher.vocab_size() != self.transformer.vocab_size() {
            return Err(TrainError::Config(format!(
                "the teacher's vocabulary has {} tokens, the student's {}",
                teacher.vocab_size(),
                self.transformer.vocab_size()
            )));
        }
        self.teacher = Some(teacher.no_grad());
        self.distillation = Some(settings);
        Ok(self)
    }

    /// The frozen teacher, when distilling.
    pub fn teacher(&self) -> Option<&RoutedTransformer<B>> {
        self.teacher.as_ref()
    }

    /// Validates under `route` instead of the full plan.
    pub fn with_validation_route(mut self, route: Route) -> Result<Self> {
        route.check_layers(self.transformer.n_layers())?;
        self.validation_route = route;
        Ok(self)
    }

    /// Pushes each training step's share of its loss to `losses`.
    pub(crate) fn reporting_losses_to(mut self, losses: StepLosses) -> Self {
        self.losses = Some(losses);
        self
    }

    /// The route stream.
    pub fn router(&self) -> &StochasticRouter {
        &self.router
    }

    /// The trained transformer.
    pub fn into_transformer(self) -> RoutedTransformer<B> {
        self.transformer
    }

    /// `(share of the step's loss, mean loss of the batch)` of `batch` under `route`:
    /// cross-entropy.
    ///
    /// # Shapes
    /// - outputs: `[1]`, `[1]`
    fn batch_losses(
        &self,
        batch: &StepBatch,
        route: &Route,
    ) -> Result<(Tensor<B, 1>, Tensor<B, 1>)> {
        let logits = self.transformer.forward_tokens(&batch.inputs, route)?;
        Ok(shares(token_losses(logits, &batch.targets)?, batch))
    }
}

/// `(share of the step's loss, mean loss of the batch)` from the loss of every position.
fn shares<B: Backend>(losses: Tensor<B, 2>, batch: &StepBatch) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [rows, seq_len] = losses.dims();
    let sum = losses.sum();
    (
        sum.clone().div_scalar(batch.targets_per_step as f64),
        sum.div_scalar((rows * seq_len) as f64),
    )
}

/// A step whose batch the model cannot run (a token outside the vocabulary, a sequence longer
/// than the model's context) is a broken data pipeline: Burn's step traits return no errors.
fn unrunnable(step: u64, error: TrainError) -> ! {
    panic!("routed training step {step} cannot run its batch: {error}")
}

impl<B: AutodiffBackend> RoutedLm<B> {
    /// The training loss of `batch` under `route`, as [`RoutedLm::batch_losses`] returns it:
    /// cross-entropy, or the distillation loss when there is a teacher.
    fn training_losses(
        &self,
        batch: &StepBatch,
        route: &Route,
    ) -> Result<(Tensor<B, 1>, Tensor<B, 1>)> {
        let (Some(teacher), Some(settings)) = (&self.teacher, &self.distillation) else {
            return self.batch_losses(batch, route);
        };
        // The inner backend: no graph is recorded for the teacher, and it runs the plain
        // backend's inference kernels.
        let teacher = teacher.valid();
        let full = CachePlan::full(teacher.n_layers())?.route();
        let (logits, targets, hidden) = if settings.hidden_weight > 0.0 && *route != full {
            // Both passes keep their states between blocks (block 0's input, the embedding,
            // is the same in both and left out).
            // The two passes are independent: at once, each fills the other's waits at the
            // ends of its split products (`join_passes`; the same bits as one after the other).
            let (student, teacher) = kv_routing::join_passes::<B, _, _>(
                || self.transformer.forward_recorded(&batch.inputs, route),
                || teacher.forward_recorded(&batch.inputs, &full),
            );
            let (student, teacher) = (student?, teacher?);
            let teacher_states: Vec<Tensor<B, 3>> = teacher.block_inputs()[1..]
                .iter()
                .map(|state| Tensor::from_inner(state.clone()))
                .collect();
            let distances = hidden_state_distances(&student.block_inputs()[1..], &teacher_states)?;
            (
                student.logits(),
                Tensor::from_inner(teacher.logits()),
                Some(distances.mul_scalar(settings.hidden_weight)),
            )
        } else {
            let (student, teacher) = kv_routing::join_passes::<B, _, _>(
                || self.transformer.forward_tokens(&batch.inputs, route),
                || teacher.forward_tokens(&batch.inputs, &full),
            );
            (student?, Tensor::from_inner(teacher?), None)
        };
        let mut losses =
            distillation_losses(logits.clone(), targets.clone(), settings.temperature)?;
        if settings.position_focus > 0.0 && *route != full {
            losses = focused_losses(losses, settings.position_focus);
        }
        if let Some(hidden) = hidden {
            losses = losses.add(hidden);
        }
        if settings.ce_weight > 0.0 {
            losses = losses
                .mul_scalar(1.0 - settings.ce_weight)
                .add(token_losses(logits, &batch.targets)?.mul_scalar(settings.ce_weight));
        }
        if settings.full_plan_weight > 0.0 && *route != full {
            let full_logits = self.transformer.forward_tokens(&batch.inputs, &full)?;
            let anchor = distillation_losses(full_logits, targets, settings.temperature)?;
            losses = losses.add(anchor.mul_scalar(settings.full_plan_weight));
        }
        Ok(shares(losses, batch))
    }
}

impl<B: AutodiffBackend> TrainStep for RoutedLm<B> {
    type Input = StepBatch;
    type Output = StepOutput<B>;

    /// # Panics
    /// When the batch does not fit the model (see [`unrunnable`]).
    fn step(&self, batch: StepBatch) -> TrainOutput<StepOutput<B>> {
        let route = self.router.route_for_step(batch.step);
        let (share, mean) = self
            .training_losses(&batch, &route)
            .unwrap_or_else(|e| unrunnable(batch.step, e));
        if let Some(losses) = &self.losses {
            losses.push(share.clone().inner());
        }
        let grads = share.backward();
        TrainOutput::new(
            self,
            grads,
            StepOutput {
                loss: mean.detach(),
            },
        )
    }
}

impl<B: Backend> InferenceStep for RoutedLm<B> {
    type Input = StepBatch;
    type Output = StepOutput<B>;

    /// # Panics
    /// When the batch does not fit the model (see [`unrunnable`]).
    fn step(&self, batch: StepBatch) -> StepOutput<B> {
        let (_, mean) = self
            .batch_losses(&batch, &self.validation_route)
            .unwrap_or_else(|e| unrunnable(batch.step, e));
        StepOutput { loss: mean }
    }
}
