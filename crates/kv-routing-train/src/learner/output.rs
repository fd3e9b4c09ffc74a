//! [`StepOutput`]: what a routed training or validation step reports to Burn's metrics.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_flex::Flex;
use burn_train::metric::{Adaptor, LossInput};
use burn_train::ItemLazy;

/// The mean next-token loss of one micro-batch (the loss Burn's `LossMetric` averages).
///
/// # Shapes
/// - loss: `[1]`
#[derive(Debug, Clone)]
pub struct StepOutput<B: Backend> {
    /// Mean cross-entropy over the micro-batch's targets (not the share of the step's loss
    /// that the gradients came from: the value is comparable whatever the layout).
    pub loss: Tensor<B, 1>,
}

impl<B: Backend> ItemLazy for StepOutput<B> {
    // Read back on Burn's metric thread, as its own `SequenceOutput` is, so that the training
    // thread never waits for the device.
    type ItemSync = StepOutput<Flex>;

    fn sync(self) -> StepOutput<Flex> {
        StepOutput {
            loss: Tensor::from_data(self.loss.into_data(), &Default::default()),
        }
    }
}

impl<B: Backend> Adaptor<LossInput<B>> for StepOutput<B> {
    fn adapt(&self) -> LossInput<B> {
        LossInput::new(self.loss.clone())
    }
}
