//! [`RoutedLmTraining`]: a routed training run set up on `burn-train`'s engine, ready to launch
//! or to customize with any of Burn's options first; [`LearnerSetup`]: where and how it runs.

use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::DataLoaderBuilder;
use burn::optim::AdamWConfig;
use burn::tensor::backend::AutodiffBackend;
use burn_flex::Flex;
use burn_train::metric::{LearningRateMetric, LossMetric};
use burn_train::{
    ExecutionStrategy, Learner, LearningComponentsMarker, MultiDeviceOptim, SupervisedTraining,
    TrainingStrategy,
};
use kv_routing::RoutedTransformer;

use crate::adapter_up_rate::AdapterUpRate;
use crate::starting_point::load_starting_point;

use super::optimizer::{RoutedLmOptimizer, StepObserver};
use super::routed_lm::RoutedLm;
use super::step_batch::StepBatcher;
use super::step_dataset::{StepDataset, StepLayout};
use super::step_losses::StepLosses;
use crate::data::{Dataset, Split};
use crate::error::{Result, TrainError};
use crate::nodes::NodeGroup;
use crate::schedule::WarmupCosineScheduler;
use crate::train_config::TrainConfig;

/// The component types of a routed run on Burn's `Learner`.
pub type RoutedLmComponents<B> =
    LearningComponentsMarker<B, WarmupCosineScheduler, RoutedLm<B>, RoutedLmOptimizer<B>>;

/// Where and how a [`RoutedLmTraining`] runs.
pub struct LearnerSetup<B: AutodiffBackend> {
    devices: Vec<B::Device>,
    accumulation: usize,
    steps: Option<std::ops::Range<u64>>,
    observer: Option<Arc<dyn StepObserver<B>>>,
    validate: bool,
    dataset: Option<Arc<Dataset>>,
    nodes: Option<Arc<NodeGroup>>,
}

impl<B: AutodiffBackend> LearnerSetup<B> {
    /// Data-parallel on `devices` (one: Burn's single-device strategy; several: its
    /// multi-device strategy, gradients summed on the first, which steps the optimizer), every
    /// step of the run, validated by Burn after the last.
    pub fn new(devices: Vec<B::Device>) -> Self {
        Self {
            devices,
            accumulation: 1,
            steps: None,
            observer: None,
            validate: true,
            dataset: None,
            nodes: None,
        }
    }

    /// Trains as one node of `group` ([`crate::nodes`]): this node reads its part of every
    /// step's `config.batch_size` sequences, and every optimizer step sums the gradients over
    /// the nodes before clipping, so the step is the one of a single node.
    pub fn with_nodes(mut self, group: Arc<NodeGroup>) -> Self {
        self.nodes = Some(group);
        self
    }

    /// Each device runs `micro_batches` micro-batches per optimizer step (Burn's gradient
    /// accumulation); the global batch stays `config.batch_size`.
    pub fn with_accumulation(mut self, micro_batches: usize) -> Self {
        self.accumulation = micro_batches;
        self
    }

    /// Runs only `steps` of the run (to resume at `steps.start`, or stop before the end): the
    /// data, routes and learning rates are those of these steps in the whole run. The
    /// optimizer state of `steps.start` is the caller's to load (`Learner::load_optim`).
    pub fn with_steps(mut self, steps: std::ops::Range<u64>) -> Self {
        self.steps = Some(steps);
        self
    }

    /// Reports every optimizer step to `observer`.
    pub fn observed_by(mut self, observer: Arc<dyn StepObserver<B>>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Reads the run's data from `dataset`, already opened for `config.data` and
    /// `config.seq_len` (a tokenized text is not read and tokenized again).
    pub fn with_dataset(mut self, dataset: Arc<Dataset>) -> Self {
        self.dataset = Some(dataset);
        self
    }

    /// Leaves out Burn's validation after the last step (an observer that validates itself).
    pub fn without_validation(mut self) -> Self {
        self.validate = false;
        self
    }
}

/// A routed run of a [`TrainConfig`] on Burn's engine: its `SupervisedTraining` (data loaders,
/// loss and learning-rate metrics, execution strategy, one epoch spanning the run's steps) and
/// its `Learner` (model, AdamW with global-norm clipping, warmup + cosine schedule).
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
    /// Sets up `config`'s run of `model` (fresh, or loaded to fine-tune) as `setup` says,
    /// writing Burn's logs under `directory`.
    ///
    /// Each optimizer step trains on `config.batch_size` sequences, spread evenly over the
    /// devices and micro-batches (an error when they do not divide it); its data, route,
    /// learning rate, clipping and AdamW update are those of step `s` of the run whatever the
    /// layout. Validation reads `config.eval_batches` batches under the full plan.
    pub fn new(
        config: &TrainConfig,
        model: RoutedTransformer<B>,
        setup: LearnerSetup<B>,
        directory: &Path,
    ) -> Result<Self> {
        config.validate()?;
        let LearnerSetup {
            devices,
            accumulation,
            steps,
            observer,
            validate,
            dataset,
            nodes,
        } = setup;
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
        let steps = steps.unwrap_or(0..config.steps);
        if steps.end > config.steps || steps.start > steps.end {
            return Err(TrainError::Config(format!(
                "steps {steps:?} are not within the run's {} steps",
                config.steps
            )));
        }
        let (node_count, rank) = nodes.as_ref().map_or((1, 0), |g| (g.nodes(), g.rank()));
        let layout = StepLayout::split_over_nodes(
            config.batch_size,
            node_count,
            rank,
            devices.len(),
            accumulation,
        )?;
        let data = match dataset {
            Some(data) if data.seq_len() == config.seq_len => data,
            Some(data) => {
                return Err(TrainError::Config(format!(
                    "the dataset serves sequences of {} tokens, the run trains on {}",
                    data.seq_len(),
                    config.seq_len
                )))
            }
            None => Arc::new(Dataset::open(&config.data, config.seq_len)?),
        };
        // Checked here, before any step: Burn's step traits cannot return the error a token
        // outside the vocabulary is, so a step would have to panic.
        let max_token = data.max_token();
        if max_token as usize >= model.vocab_size() {
            return Err(TrainError::Data(format!(
                "the data holds token id {max_token}, outside the model's vocabulary of {} (a tokenizer that does not belong to the model?)",
                model.vocab_size()
            )));
        }
        let train = StepDataset::new(
            data.clone(),
            Split::Train,
            steps.start,
            steps.end - steps.start,
            layout,
        )?;
        let validation = StepDataset::new(
            data,
            Split::Validation,
            0,
            if validate {
                config.eval_batches as u64
            } else {
                0
            },
            StepLayout::split(config.batch_size, 1, 1)?,
        )?;
        let train_loader = DataLoaderBuilder::<B, _, _>::new(StepBatcher)
            .batch_size(layout.batch_per_device)
            .build(train);
        let validation_loader = DataLoaderBuilder::<B::InnerBackend, _, _>::new(StepBatcher)
            .batch_size(config.batch_size)
            .build(validation);

        let router = config.router()?;
        let mut model = RoutedLm::new(model, router)?;
        if let Some(settings) = &config.distill {
            let teacher = load_starting_point::<B>(&settings.teacher, &devices[0])?;
            if teacher.config.max_seq_len < config.seq_len {
                return Err(TrainError::Config(format!(
                    "the teacher {} holds {} tokens of context, the run trains on {}",
                    settings.teacher.display(),
                    teacher.config.max_seq_len,
                    config.seq_len
                )));
            }
            model = model.distilled_from(teacher.model, settings.clone())?;
        }
        let adamw = AdamWConfig::new()
            .with_weight_decay(config.weight_decay as f32)
            .init::<B, RoutedLm<B>>();
        let mut optimizer = RoutedLmOptimizer::new(adamw, config.grad_clip);
        if let Some(ratio) = config.adapter_up_lr_ratio {
            optimizer = optimizer.with_up_rate(AdapterUpRate::new(ratio, &model.transformer)?);
        }
        if let Some(group) = nodes {
            optimizer = optimizer.across_nodes(group);
        }
        if let Some(observer) = observer {
            let losses = StepLosses::default();
            model = model.reporting_losses_to(losses.clone());
            optimizer = optimizer.observed_by(observer, losses);
        }
        // Burn steps the scheduler once per micro-batch.
        let accumulation = accumulation as u64;
        let mut scheduler =
            WarmupCosineScheduler::new(config.schedule()).with_calls_per_step(accumulation);
        scheduler = burn::lr_scheduler::LrScheduler::load_record::<B>(
            scheduler,
            steps.start * accumulation,
        );
        let learner = Learner::new(model, optimizer, scheduler);

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
            training = training.grads_accumulation(accumulation as usize);
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
