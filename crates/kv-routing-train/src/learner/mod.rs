//! Training on `burn-train`'s engine: a routed language model that Burn's `Learner` trains, on
//! one device or data-parallel on several.
//!
//! - [`RoutedLm`]: the model as Burn's `TrainStep` / `InferenceStep` (route per optimizer step
//!   from the router's seed, loss normalized over the whole step).
//! - [`RoutedLmOptimizer`]: AdamW with global-norm clipping; a [`StepObserver`] sees each step
//!   (the crate's `trainer` logs, validates and checkpoints through one).
//! - [`StepDataset`] and [`StepBatcher`]: a run's sequences as a Burn dataset, laid out so that
//!   Burn's multi-device loader gives each device its share of every step ([`StepLayout`]).
//! - [`RoutedLmTraining`]: a [`crate::train_config::TrainConfig`] run set up as Burn's
//!   `SupervisedTraining` and `Learner`, on the devices of a [`LearnerSetup`].
//! - [`StepOutput`]: what a step reports to Burn's metrics; [`SilentRenderer`] shows nothing.

mod optimizer;
mod output;
mod routed_lm;
mod silent_renderer;
mod step_batch;
mod step_dataset;
mod step_losses;
mod training;

pub use optimizer::{AdamWAdaptor, RoutedLmOptimizer, StepObserver};
pub use output::StepOutput;
pub use routed_lm::RoutedLm;
pub use silent_renderer::SilentRenderer;
pub use step_batch::{StepBatch, StepBatcher};
pub use step_dataset::{StepDataset, StepItem, StepLayout};
pub use step_losses::StepLosses;
pub use training::{LearnerSetup, RoutedLmComponents, RoutedLmTraining};
