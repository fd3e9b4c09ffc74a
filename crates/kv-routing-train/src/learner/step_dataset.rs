//! [`StepDataset`]: the sequences of a run's optimizer steps, laid out so that Burn's
//! multi-device data loading hands every device its share of every step.
//!
//! # Layout
//! An optimizer step trains on `devices x accumulation x batch_per_device` sequences (its
//! *global batch*). Step `s` reads samples `s * G .. (s + 1) * G` of the data (`G` the global
//! batch), exactly the samples the single-device loop of [`crate::trainer`] reads at step `s`
//! with `batch_size = G`. Within a step, micro-batch `m` of device `d` holds samples
//! `s * G + (m * devices + d) * batch_per_device ..` (one sequence after another).
//!
//! On several nodes ([`crate::nodes`]) the global batch is `nodes` times a node's batch
//! `devices x accumulation x batch_per_device`, and node `r` reads the `r`-th contiguous part
//! of each step: its device `d`'s micro-batch `m` holds samples `s * G + r * node_batch + (m *
//! devices + d) * batch_per_device ..`. The nodes together read each step's `G` samples once.
//!
//! Burn's `split_dataloader` gives device `d` the `d`-th contiguous `1 / devices` of the items,
//! and a loader of batch size `batch_per_device` cuts each share into micro-batches in order; the
//! items are therefore ordered device-major, then step, then micro-batch, then sequence, so that
//! the `i`-th batch of every device belongs to the same step. The loader must not shuffle.

use std::sync::Arc;

use burn::data::dataset::Dataset as BurnDataset;

use crate::data::{Dataset, Split};
use crate::error::{Result, TrainError};

/// How the sequences of one optimizer step are spread over devices and accumulated
/// micro-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepLayout {
    /// Nodes (processes) training together, each with its own devices.
    pub nodes: usize,
    /// This node's rank, `0..nodes`.
    pub node: usize,
    /// Devices of this node training together (data parallel).
    pub devices: usize,
    /// Micro-batches each device runs per optimizer step (Burn's gradient accumulation).
    pub accumulation: usize,
    /// Sequences in each micro-batch.
    pub batch_per_device: usize,
}

impl StepLayout {
    /// The layout that spreads a global batch of `batch_size` sequences evenly over `devices`
    /// devices and `accumulation` micro-batches; an error when it does not divide evenly.
    pub fn split(batch_size: usize, devices: usize, accumulation: usize) -> Result<Self> {
        Self::split_over_nodes(batch_size, 1, 0, devices, accumulation)
    }

    /// Node `node`'s part of the layout that spreads a global batch of `batch_size` sequences
    /// evenly over `nodes` nodes of `devices` devices and `accumulation` micro-batches each; an
    /// error when it does not divide evenly or `node` is not below `nodes`.
    pub fn split_over_nodes(
        batch_size: usize,
        nodes: usize,
        node: usize,
        devices: usize,
        accumulation: usize,
    ) -> Result<Self> {
        let parts = [nodes, devices, accumulation]
            .into_iter()
            .try_fold(1usize, |product, n| product.checked_mul(n))
            .unwrap_or(0);
        if parts == 0 || batch_size == 0 || !batch_size.is_multiple_of(parts) {
            let over_nodes = if nodes == 1 {
                String::new()
            } else {
                format!("{nodes} nodes x ")
            };
            return Err(TrainError::Config(format!(
                "a batch of {batch_size} sequences does not split evenly over {over_nodes}{devices} devices x {accumulation} accumulated micro-batches"
            )));
        }
        if node >= nodes {
            return Err(TrainError::Config(format!(
                "node {node} is not below the node count {nodes}"
            )));
        }
        Ok(Self {
            nodes,
            node,
            devices,
            accumulation,
            batch_per_device: batch_size / parts,
        })
    }

    /// Sequences this node trains on per optimizer step.
    pub fn node_batch(&self) -> usize {
        self.devices * self.accumulation * self.batch_per_device
    }

    /// Sequences per optimizer step, over all nodes.
    pub fn global_batch(&self) -> usize {
        self.nodes * self.node_batch()
    }
}

/// One training sequence and the optimizer step it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct StepItem {
    /// The run's optimizer step (its route is drawn from it).
    pub step: u64,
    /// `seq_len + 1` tokens: inputs and, shifted by one, targets.
    pub tokens: Vec<u32>,
    /// Next-token targets in the whole optimizer step, over every device and micro-batch: each
    /// micro-batch's summed loss is divided by it, so that the gradients Burn sums over
    /// devices and micro-batches are those of the step's mean loss.
    pub targets_per_step: usize,
}

/// The sequences of optimizer steps `first_step .. first_step + steps` of a run, as a Burn
/// dataset in the order of [`StepLayout`].
#[derive(Debug, Clone)]
pub struct StepDataset {
    data: Arc<Dataset>,
    split: Split,
    first_step: u64,
    steps: u64,
    layout: StepLayout,
}

impl StepDataset {
    /// The sequences of `steps` optimizer steps from `first_step`, read from `split` of `data`.
    pub fn new(
        data: Arc<Dataset>,
        split: Split,
        first_step: u64,
        steps: u64,
        layout: StepLayout,
    ) -> Result<Self> {
        let items = (steps as u128) * layout.global_batch() as u128;
        if items > usize::MAX as u128 {
            return Err(TrainError::Config(format!(
                "{steps} steps of {} sequences do not fit in a dataset",
                layout.global_batch()
            )));
        }
        Ok(Self {
            data,
            split,
            first_step,
            steps,
            layout,
        })
    }

    /// The layout of each step.
    pub fn layout(&self) -> StepLayout {
        self.layout
    }

    /// `(step, sample index)` of item `index`.
    fn locate(&self, index: usize) -> (u64, u64) {
        let layout = self.layout;
        let per_device = self.steps as usize * layout.accumulation * layout.batch_per_device;
        let (device, within) = (index / per_device, index % per_device);
        let (micro_batch, sequence) = (
            within / layout.batch_per_device,
            within % layout.batch_per_device,
        );
        let (step, micro) = (
            micro_batch / layout.accumulation,
            micro_batch % layout.accumulation,
        );
        let step = self.first_step + step as u64;
        let offset = layout.node * layout.node_batch()
            + (micro * layout.devices + device) * layout.batch_per_device
            + sequence;
        (step, step * layout.global_batch() as u64 + offset as u64)
    }
}

impl BurnDataset<StepItem> for StepDataset {
    fn get(&self, index: usize) -> Option<StepItem> {
        if index >= self.len() {
            return None;
        }
        let (step, sample) = self.locate(index);
        Some(StepItem {
            step,
            tokens: self.data.sample(self.split, sample).tokens,
            targets_per_step: self.layout.global_batch() * self.data.seq_len(),
        })
    }

    fn len(&self) -> usize {
        self.steps as usize * self.layout.node_batch()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use burn::data::dataset::Dataset as _;

    use super::{StepDataset, StepLayout};
    use crate::data::{DataSource, Dataset, Split};

    #[test]
    fn every_device_share_holds_its_part_of_every_step() {
        let data = Arc::new(Dataset::open(&DataSource::Synthetic { seed: 3 }, 8).unwrap());
        let layout = StepLayout::split(12, 2, 3).unwrap();
        assert_eq!(layout.batch_per_device, 2);
        let dataset = StepDataset::new(data.clone(), Split::Train, 5, 4, layout).unwrap();
        assert_eq!(dataset.len(), 48);
        // Burn's split: device d reads items d * 24 .. (d + 1) * 24 in batches of 2.
        for device in 0..2 {
            for (batch, items) in (device * 24..(device + 1) * 24)
                .map(|i| dataset.get(i).unwrap())
                .collect::<Vec<_>>()
                .chunks(2)
                .enumerate()
            {
                let step = 5 + (batch / 3) as u64;
                assert!(items.iter().all(|item| item.step == step));
                assert!(items.iter().all(|item| item.targets_per_step == 12 * 8));
            }
        }
        // Together the devices read each step's samples once, as the one-device loop does.
        for step in 5..9u64 {
            let mut read: Vec<Vec<u32>> = (0..48)
                .map(|i| dataset.get(i).unwrap())
                .filter(|item| item.step == step)
                .map(|item| item.tokens)
                .collect();
            let mut expected = data.batch(Split::Train, step * 12, 12).inputs;
            read.iter_mut().for_each(|tokens| {
                tokens.pop();
            });
            read.sort();
            expected.sort();
            assert_eq!(read, expected);
        }
        assert!(dataset.get(48).is_none());
    }

    #[test]
    fn the_nodes_read_each_step_once_between_them() {
        let data = Arc::new(Dataset::open(&DataSource::Synthetic { seed: 4 }, 8).unwrap());
        let (steps, first) = (3u64, 2u64);
        let mut read: Vec<(u64, Vec<u32>)> = Vec::new();
        for node in 0..3 {
            let layout = StepLayout::split_over_nodes(12, 3, node, 2, 1).unwrap();
            assert_eq!((layout.node_batch(), layout.global_batch()), (4, 12));
            let dataset =
                StepDataset::new(data.clone(), Split::Train, first, steps, layout).unwrap();
            assert_eq!(dataset.len(), 12);
            for i in 0..dataset.len() {
                let item = dataset.get(i).unwrap();
                assert_eq!(
                    item.targets_per_step,
                    12 * 8,
                    "divided by the whole step's targets"
                );
                read.push((item.step, item.tokens));
            }
        }
        let one_node = StepDataset::new(
            data,
            Split::Train,
            first,
            steps,
            StepLayout::split(12, 1, 1).unwrap(),
        )
        .unwrap();
        let mut expected: Vec<(u64, Vec<u32>)> = (0..one_node.len())
            .map(|i| one_node.get(i).unwrap())
            .map(|item| (item.step, item.tokens))
            .collect();
        read.sort();
        expected.sort();
        assert_eq!(read, expected);
        assert!(StepLayout::split_over_nodes(12, 3, 3, 1, 1).is_err());
        let uneven = StepLayout::split_over_nodes(4, 3, 0, 1, 1)
            .unwrap_err()
            .to_string();
        assert!(uneven.contains("3 nodes x 1 devices"), "{uneven}");
    }

    #[test]
    fn uneven_layouts_are_refused() {
        assert!(StepLayout::split(10, 4, 1).is_err());
        assert!(StepLayout::split(8, 0, 1).is_err());
        assert!(StepLayout::split(8, 2, 0).is_err());
        assert!(StepLayout::split(0, 1, 1).is_err());
    }
}
