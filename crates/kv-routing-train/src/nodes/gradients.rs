//! [`NodeGroup::all_reduce_gradients`]: one optimizer step's gradients (and its loss) summed
//! over the nodes, parameter by parameter.
//!
//! Parameters go in the module's visiting order, one buffer each, so no node ever holds a
//! second copy of the whole gradient; a parameter without a gradient this step (a layer whose
//! own K/V the route did not read) is sent as absent and must be absent on every node.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData};

use super::wire::Values;
use super::{GroupState, NodeGroup};
use crate::error::{Result, TrainError};

impl NodeGroup {
    /// Replaces every gradient of `module` in `grads`, and `loss` when given, by its sum over
    /// the nodes: the exchange of the group's next step (every node must call this once per
    /// optimizer step, with the same parameters).
    ///
    /// # Shapes
    /// - loss: `[1]`
    pub fn all_reduce_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        grads: &mut GradientsParams,
        loss: Option<&mut Tensor<B::InnerBackend, 1>>,
    ) -> Result<()> {
        let mut state = self.lock();
        let step = state.step;
        let mut visitor = SumVisitor::<B> {
            group: self,
            state: &mut state,
            step,
            grads,
            index: 0,
            error: None,
            _backend: std::marker::PhantomData,
        };
        module.visit(&mut visitor);
        let (index, error) = (visitor.index, visitor.error);
        if let Some(error) = error {
            return Err(error);
        }
        if let Some(loss) = loss {
            *loss = sum_tensor(self, &mut state, step, index, loss.clone())?;
        }
        state.step += 1;
        Ok(())
    }
}

struct SumVisitor<'a, B: AutodiffBackend> {
    group: &'a NodeGroup,
    state: &'a mut GroupState,
    step: u64,
    grads: &'a mut GradientsParams,
    index: u64,
    error: Option<TrainError>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SumVisitor<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let index = self.index;
        self.index += 1;
        if self.error.is_some() {
            return;
        }
        let grad = self.grads.remove::<B::InnerBackend, D>(param.id);
        let result = match grad {
            Some(grad) => sum_tensor(self.group, self.state, self.step, index, grad).map(Some),
            None => self
                .group
                .sum_locked(self.state, self.step, index, Values::Absent)
                .map(|_| None),
        };
        match result {
            Ok(Some(sum)) => self.grads.register(param.id, sum),
            Ok(None) => {}
            Err(error) => self.error = Some(error),
        }
    }
}

/// `tensor` summed over the nodes, on its own device and in its own float type.
fn sum_tensor<B: burn::tensor::backend::Backend, const D: usize>(
    group: &NodeGroup,
    state: &mut GroupState,
    step: u64,
    index: u64,
    tensor: Tensor<B, D>,
) -> Result<Tensor<B, D>> {
    let device = tensor.device();
    let data = tensor.into_data();
    let (shape, dtype) = (data.shape.clone(), data.dtype);
    let values = match dtype {
        DType::F64 => Values::F64(data.into_vec::<f64>().expect("f64 data")),
        _ => Values::F32(
            data.convert::<f32>()
                .into_vec::<f32>()
                .expect("converted to f32"),
        ),
    };
    let data = match group.sum_locked(state, step, index, values)? {
        Values::F64(sum) => TensorData::new(sum, shape),
        Values::F32(sum) => TensorData::new(sum, shape),
        Values::Absent => unreachable!("a present buffer sums to a present buffer"),
    };
    Ok(Tensor::from_data(data, (&device, dtype)))
}
