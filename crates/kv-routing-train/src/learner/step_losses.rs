//! [`StepLosses`]: each micro-batch's share of the current optimizer step's loss, collected from
//! the devices that computed it until the optimizer step reads their sum.
//!
//! Burn's step traits return the gradients and a metric item, nothing an optimizer sees; a
//! [`super::StepObserver`] needs the step's loss with its weights, as the single-device loop
//! logs it. The shares stay device tensors (nothing here waits for a device), kept type-erased
//! because the model that pushes them and the optimizer that reads them are of different
//! backends (autodiff and inner).

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// A shared list of loss shares. Clones share the list.
#[derive(Clone, Default)]
pub struct StepLosses(Arc<Mutex<Vec<Box<dyn Any + Send>>>>);

impl fmt::Debug for StepLosses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepLosses").finish_non_exhaustive()
    }
}

impl StepLosses {
    /// Adds one micro-batch's share.
    ///
    /// # Shapes
    /// - share: `[1]`
    pub fn push<B: Backend>(&self, share: Tensor<B, 1>) {
        self.0
            .lock()
            .expect("no holder panics")
            .push(Box::new(share));
    }

    /// The sum of the shares pushed since the last call, on `device`; `None` when there were
    /// none.
    ///
    /// # Panics
    /// When a share was pushed from another backend than `B` (a contract of the crate's own
    /// use: the model pushes its inner backend's tensors, the optimizer reads the same type).
    ///
    /// # Shapes
    /// - output: `[1]`
    pub fn take<B: Backend>(&self, device: &B::Device) -> Option<Tensor<B, 1>> {
        let shares = std::mem::take(&mut *self.0.lock().expect("no holder panics"));
        shares
            .into_iter()
            .map(|share| {
                share
                    .downcast::<Tensor<B, 1>>()
                    .expect("loss shares of one backend")
                    .to_device(device)
            })
            .reduce(|sum, share| sum + share)
    }
}
