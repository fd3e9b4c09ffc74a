//! [`RoutedLmOptimizer`]: AdamW with global-norm clipping, and an optional [`StepObserver`] that
//! sees every optimizer step (to log, validate and checkpoint in the middle of Burn's epoch).
//!
//! On several nodes the gradients (and the step's loss) are summed over the nodes here, first,
//! so that clipping and AdamW see the whole step's gradient on every node ([`crate::nodes`]).
//!
//! Clipping happens here, where Burn configures its own (`GradientClippingConfig` on the
//! optimizer), but over all parameters together, as `torch.nn.utils.clip_grad_norm_` does:
//! Burn's `GradientClipping::Norm` clips each tensor on its own, which turns the update's
//! direction (see `crate::grad_clip`).

use std::sync::Arc;

use burn::module::Module;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, GradientsAccumulator, GradientsParams, MultiGradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

use super::routed_lm::RoutedLm;
use super::step_losses::StepLosses;
use crate::adapter_up_rate::AdapterUpRate;
use crate::error::TrainError;
use crate::grad_clip::clip_global_norm;
use crate::nodes::NodeGroup;

/// AdamW through Burn's adaptor, over a [`RoutedLm`].
pub type AdamWAdaptor<B> = OptimizerAdaptor<AdamW, RoutedLm<B>, B>;

/// Sees every optimizer step of a routed run, on the thread that steps the optimizer.
pub trait StepObserver<B: AutodiffBackend>: Send + Sync {
    /// Called after the update of an optimizer step.
    ///
    /// - `model`, `optimizer`: the updated weights and AdamW state.
    /// - `learning_rate`: the rate the step used.
    /// - `loss`: the step's mean loss over all its devices and micro-batches.
    /// - `grad_norm`: the global gradient norm before clipping.
    ///
    /// # Shapes
    /// - loss, grad_norm: `[1]`
    fn after_step(
        &self,
        model: &RoutedLm<B>,
        optimizer: &AdamWAdaptor<B>,
        learning_rate: f64,
        loss: Tensor<B::InnerBackend, 1>,
        grad_norm: Tensor<B::InnerBackend, 1>,
    );

    /// Called instead of [`StepObserver::after_step`] when a step could not be taken (the
    /// nodes could not sum its gradients): the weights were not updated. Burn's step traits
    /// cannot return the error, so the observer must keep it and stop the run; by default it
    /// panics with it.
    fn step_failed(&self, error: TrainError) {
        panic!("a routed training step failed: {error}");
    }
}

/// AdamW with global-norm clipping (the optimizer of [`super::RoutedLmTraining`]).
pub struct RoutedLmOptimizer<B: AutodiffBackend> {
    adamw: AdamWAdaptor<B>,
    grad_clip: f64,
    up_rate: Option<AdapterUpRate>,
    observer: Option<(Arc<dyn StepObserver<B>>, StepLosses)>,
    nodes: Option<Arc<NodeGroup>>,
}

impl<B: AutodiffBackend> Clone for RoutedLmOptimizer<B> {
    fn clone(&self) -> Self {
        Self {
            adamw: self.adamw.clone(),
            grad_clip: self.grad_clip,
            up_rate: self.up_rate.clone(),
            observer: self.observer.clone(),
            nodes: self.nodes.clone(),
        }
    }
}

impl<B: AutodiffBackend> RoutedLmOptimizer<B> {
    /// `adamw`, its gradients first clipped to a global norm of `grad_clip`.
    pub fn new(adamw: AdamWAdaptor<B>, grad_clip: f64) -> Self {
        Self {
            adamw,
            grad_clip,
            up_rate: None,
            observer: None,
            nodes: None,
        }
    }

    /// Steps the sharing adapters' `up` matrices at a multiple of the rate (LoRA+).
    pub fn with_up_rate(self, up_rate: AdapterUpRate) -> Self {
        Self {
            up_rate: Some(up_rate),
            ..self
        }
    }

    /// Sums every step's gradients (and loss) over the nodes of `group` before clipping.
    pub(crate) fn across_nodes(self, group: Arc<NodeGroup>) -> Self {
        Self {
            nodes: Some(group),
            ..self
        }
    }

    /// Reports each step to `observer`, with the loss shares the model pushed to `losses`.
    pub(crate) fn observed_by(
        self,
        observer: Arc<dyn StepObserver<B>>,
        losses: StepLosses,
    ) -> Self {
        Self {
            observer: Some((observer, losses)),
            ..self
        }
    }
}

impl<B: AutodiffBackend> Optimizer<RoutedLm<B>, B> for RoutedLmOptimizer<B> {
    type Record = <AdamWAdaptor<B> as Optimizer<RoutedLm<B>, B>>::Record;

    fn step(&mut self, lr: f64, module: RoutedLm<B>, mut grads: GradientsParams) -> RoutedLm<B> {
        let mut loss = self.observer.as_ref().map(|(_, losses)| {
            let device = module
                .devices()
                .into_iter()
                .next()
                .expect("a routed transformer has parameters");
            losses
                .take(&device)
                .unwrap_or_else(|| Tensor::zeros([1], &device))
        });
        if let Some(group) = &self.nodes {
            if let Err(error) = group.all_reduce_gradients(&module, &mut grads, loss.as_mut()) {
                // No update: the nodes would no longer hold the same weights.
                match &self.observer {
                    Some((observer, _)) => observer.step_failed(error),
                    None => panic!("a routed training step failed: {error}"),
                }
                return module;
            }
        }
        let grad_norm = clip_global_norm(&module, &mut grads, self.grad_clip);
        let module = match &self.up_rate {
            Some(up_rate) => up_rate.step(&mut self.adamw, lr, module, grads),
            None => self.adamw.step(lr, module, grads),
        };
        if let (Some((observer, _)), Some(loss)) = (&self.observer, loss) {
            observer.after_step(&module, &self.adamw, lr, loss, grad_norm);
        }
        module
    }

    /// Burn's sharded optimization hands each device's gradients separately; a global norm
    /// needs them together, so they are summed on the model's device and the step is the one
    /// of [`Optimizer::step`].
    fn step_multi(
        &mut self,
        lr: f64,
        module: RoutedLm<B>,
        grads: MultiGradientsParams,
    ) -> RoutedLm<B> {
        let device = module
            .devices()
            .into_iter()
            .next()
            .expect("a routed transformer has parameters");
        let mut summed = GradientsAccumulator::new();
        for (device_grads, _) in grads.grads {
            summed.accumulate::<B>(&module, device_grads.to_device::<B, _>(&device, &module));
        }
        self.step(lr, module, summed.grads())
    }

    fn to_record(&self) -> Self::Record {
        self.adamw.to_record()
    }

    fn load_record(self, record: Self::Record) -> Self {
        Self {
            adamw: self.adamw.load_record(record),
            ..self
        }
    }
}
