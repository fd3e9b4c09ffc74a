//! [`RoutedLmTraining`]: a routed training run set up on `burn-train`'s engine, ready to launch
//! or to customize with any of Burn's options first.

use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::DataLoaderBuilder;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig};
use burn::tensor::backend::AutodiffBackend;
use burn_flex::Flex;
use burn_train::metric::{LearningRateMetric, LossMetric};
use burn_train::{
    ExecutionStrategy, Learner, LearningComponentsMarker, MultiDeviceOptim, SupervisedTraining,
    TrainingStrategy,
};
use kv_routing::{RoutedTransformer, StochasticRouter};

use super::routed_lm::RoutedLm;
use super::step_batch::StepBatcher;
use super::step_dataset::{StepDataset, StepLayout};
use crate::data::{Dataset, Split};
use crate::error::{Result, TrainError};
use crate::schedule::WarmupCosineScheduler;
use crate::train_config::TrainConfig;

/// AdamW through Burn's adaptor, over a [`RoutedLm`].
pub type RoutedLmOptimizer<B> = OptimizerAdaptor<AdamW, RoutedLm<B>, B>;

/// The component types of a routed run on Burn's `Learner`.
pub type RoutedLmComponents<B> =
    LearningComponentsMarker<B, WarmupCosineScheduler, RoutedLm<B>, RoutedLmOptimizer<B>>;

/// A routed run of a [`TrainConfig`] on Burn's engine: its `SupervisedTraining` (data loaders,
/// loss and learning-rate metrics, execution strategy, one epoch spanning the run's steps) and
/// its `Learner` (model, AdamW, warmup + cosine schedule).
///
/// Customize `training` with Burn's builder (renderer, checkpointer, metric loggers, early
/// stopping, interrupter), then [`RoutedLmTraining::launch`].
pub struct RoutedLmTraining<B: AutodiffBackend> {
    /// Burn's training setup.
    pub training: SupervisedTraining<RoutedLmComponents<B>>,
    /// Burn's learner.
    pub learner: Learner<RoutedLmComponents<B>>,
    /// How each step's sequences are spread over the devices and micro-batches.
    pub layout: StepLayout,
}

impl<B: AutodiffBackend> RoutedLmTraining<B> {
    /// Sets up `config`'s run of `model` (fresh, or loaded to fine-tune) on `devices`, writing
    /// Burn's logs under `directory`.
    ///
    /// Each optimizer step trains on `config.batch_size` sequences, spread evenly over the
    /// devices and `accumulation` micro-batches per device (an error when they do not divide
    /// it); its data, route, schedule, clipping and AdamW update are those of the single-device
    /// loop in [`crate::trainer`]. One device trains as Burn's single-device strategy, several
    /// as its multi-device strategy (gradients summed on the first device, which steps the
    /// optimizer). Validation reads `config.eval_batches` batches under the full plan, after the
    /// last step.
    pub fn new(
        config: &TrainConfig,
        model: RoutedTransformer<B>,
        devices: Vec<B::Device>,
        accumulation: usize,
        directory: &Path,
    ) -> Result<Self> {
        config.validate()?;
        if devices.is_empty() {
            return Err(TrainError::Config(
                "training needs at least one device".into(),
            ));
        }
        if model.n_layers() != config.model.n_layers {
            return Err(TrainError::Config(format!(
                "the model has {} layers, the configuration {}",
                model.n_layers(),
                config.model.n_layers
            )));
        }
        let layout = StepLayout::split(config.batch_size, devices.len(), accumulation)?;
        let data = Arc::new(Dataset::open(&config.data, config.seq_len)?);
        let train = StepDataset::new(data.clone(), Split::Train, 0, config.steps, layout)?;
        let validation_layout = StepLayout::split(config.batch_size, 1, 1)?;
        let validation = StepDataset::new(
            data,
            Split::Validation,
            0,
            config.eval_batches as u64,
            validation_layout,
        )?;
        let train_loader = DataLoaderBuilder::<B, _, _>::new(StepBatcher)
            .batch_size(layout.batch_per_device)
            .build(train);
        let validation_loader = DataLoaderBuilder::<B::InnerBackend, _, _>::new(StepBatcher)
            .batch_size(config.batch_size)
            .build(validation);

        let router = StochasticRouter::new(config.model.n_layers, config.p, config.route_seed)?;
        let model = RoutedLm::new(model, router, config.grad_clip)?;
        let optimizer = AdamWConfig::new()
            .with_weight_decay(config.weight_decay as f32)
            .init::<B, RoutedLm<B>>();
        let learner = Learner::new(
            model,
            optimizer,
            // Burn steps the scheduler once per micro-batch.
            WarmupCosineScheduler::new(config.schedule()).with_calls_per_step(accumulation as u64),
        );

        let strategy = match devices.len() {
            1 => ExecutionStrategy::single(devices[0].clone()),
            _ => ExecutionStrategy::multi(devices, MultiDeviceOptim::OptimMainDevice),
        };
        let mut training = SupervisedTraining::new(directory, train_loader, validation_loader)
            // Metrics read the synced items, which live on flex (see `StepOutput`).
            .metric_train_numeric(LossMetric::<Flex>::new())
            .metric_valid_numeric(LossMetric::<Flex>::new())
            .metric_train_numeric(LearningRateMetric::new())
            .num_epochs(1)
            .with_training_strategy(TrainingStrategy::Default(strategy));
        if accumulation > 1 {
            training = training.grads_accumulation(accumulation);
        }
        Ok(Self {
            training,
            learner,
            layout,
        })
    }

    /// Runs the training; returns the trained transformer.
    pub fn launch(self) -> RoutedTransformer<B::InnerBackend> {
        self.training.launch(self.learner).model.into_transformer()
    }
}
