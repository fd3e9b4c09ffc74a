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
//! - Validation runs under one fixed route (the full plan unless set otherwise).

use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use burn_train::{InferenceStep, TrainOutput, TrainStep};
use kv_routing::{CachePlan, Route, RoutedTransformer, StochasticRouter};

use super::output::StepOutput;
use super::step_batch::StepBatch;
use super::step_losses::StepLosses;
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
        })
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

    /// `(share of the step's loss, mean loss of the batch)` of `batch` under `route`.
    ///
    /// # Shapes
    /// - outputs: `[1]`, `[1]`
    fn batch_losses(
        &self,
        batch: &StepBatch,
        route: &Route,
    ) -> Result<(Tensor<B, 1>, Tensor<B, 1>)> {
        let logits = self.transformer.forward_tokens(&batch.inputs, route)?;
        let losses = token_losses(logits, &batch.targets)?;
        let [rows, seq_len] = losses.dims();
        let sum = losses.sum();
        Ok((
            sum.clone().div_scalar(batch.targets_per_step as f64),
            sum.div_scalar((rows * seq_len) as f64),
        ))
    }
}

/// A step whose batch the model cannot run (a token outside the vocabulary, a sequence longer
/// than the model's context) is a broken data pipeline: Burn's step traits return no errors.
fn unrunnable(step: u64, error: TrainError) -> ! {
    panic!("routed training step {step} cannot run its batch: {error}")
}

impl<B: AutodiffBackend> TrainStep for RoutedLm<B> {
    type Input = StepBatch;
    type Output = StepOutput<B>;

    /// # Panics
    /// When the batch does not fit the model (see [`unrunnable`]).
    fn step(&self, batch: StepBatch) -> TrainOutput<StepOutput<B>> {
        let route = self.router.route_for_step(batch.step);
        let (share, mean) = self
            .batch_losses(&batch, &route)
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
