//! [`StepBatch`]: one micro-batch of a routed training step, as Burn's data loader delivers it
//! to a device, and the [`StepBatcher`] that assembles it.
//!
//! The batch stays on the host: the model turns it into tensors on the device it runs on (under
//! data parallelism, each worker's own), so the loader need not know the devices.

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::backend::Backend;

use super::step_dataset::StepItem;

/// Sequences of one micro-batch, all of the same optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepBatch {
    /// The run's optimizer step: its route is `router.route_for_step(step)`.
    pub step: u64,
    /// `[batch][seq_len]` input tokens.
    pub inputs: Vec<Vec<u32>>,
    /// `[batch][seq_len]` next-token targets.
    pub targets: Vec<Vec<u32>>,
    /// Next-token targets in the whole optimizer step (every device and micro-batch).
    pub targets_per_step: usize,
}

/// Assembles [`StepItem`]s into a [`StepBatch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StepBatcher;

impl<B: Backend> Batcher<B, StepItem, StepBatch> for StepBatcher {
    /// # Panics
    /// When the items belong to different steps or denominators: a loader that shuffles, or
    /// whose batch size is not the layout's `batch_per_device`, breaks the contract of
    /// [`super::StepDataset`] (a batch shares one route), which no step could train correctly.
    fn batch(&self, items: Vec<StepItem>, _device: &B::Device) -> StepBatch {
        let first = items.first().expect("Burn's loader never batches nothing");
        let (step, targets_per_step) = (first.step, first.targets_per_step);
        assert!(
            items
                .iter()
                .all(|item| item.step == step && item.targets_per_step == targets_per_step),
            "a batch mixes optimizer steps: load a StepDataset in order (no shuffle) with batch size = its layout's batch_per_device"
        );
        let (inputs, targets) = items
            .into_iter()
            .map(|item| {
                let inputs = item.tokens[..item.tokens.len() - 1].to_vec();
                let mut targets = item.tokens;
                targets.remove(0);
                (inputs, targets)
            })
            .unzip();
        StepBatch {
            step,
            inputs,
            targets,
            targets_per_step,
        }
    }
}
