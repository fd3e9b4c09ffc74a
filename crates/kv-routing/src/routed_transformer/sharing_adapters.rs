//! Sharing adapters on a whole model ([`crate::sharing_adapter`]): adding them, and making
//! them the only trainable parameters.

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::RoutedTransformer;
use crate::error::KvRoutingError;
use crate::sharing_adapter::SharingAdapterConfig;

impl<B: Backend> RoutedTransformer<B> {
    /// This model with a fresh sharing adapter ([`crate::sharing_adapter`]) on every
    /// projection of every block, drawn from `config` (block 0 first; query, key, value,
    /// output, gate, up, down). A fresh adapter changes nothing under any plan until trained.
    /// A model that already has adapters is an error (train them, or load them with the
    /// configuration that has them).
    pub fn with_sharing_adapters(mut self, config: &SharingAdapterConfig) -> crate::Result<Self> {
        config.validate()?;
        if self.sharing_adapter_rank().is_some() {
            return Err(KvRoutingError::InvalidConfig(
                "the model already has sharing adapters".into(),
            ));
        }
        let mut stream = config.stream();
        for block in &mut self.blocks {
            for projection in block.projections_mut() {
                let [d_input, d_output] = projection.dims();
                let device = projection.weight.lazy_device();
                projection.sharing =
                    Some(config.init_delta(d_input, d_output, &mut stream, &device));
            }
        }
        Ok(self)
    }

    /// This model for serving routes that share: every sharing delta added into its
    /// projection's weight (`W + scale · down · up`, computed once on the device), so that a
    /// sharing route costs what the model without adapters costs (unmerged, each projection
    /// runs two more small products per step: about 3 ms more a decode step on SmolLM2 at
    /// rank 64, docs/benchmarks.md). The full plan needs the weights the deltas were added to, so a pass
    /// under a route that shares nothing is then an [`KvRoutingError::InvalidRoute`].
    /// Projections held as blocks keep their delta (their sum would have to be quantized
    /// again). Serve the merged model; train and save the unmerged one: a merged model's
    /// record would hold the merged weights with nothing saying so, so the training
    /// checkpoint and the Hugging Face export refuse it. Merged weights are new parameters,
    /// as trainable as the ones they replace.
    pub fn with_sharing_adapters_merged(mut self) -> crate::Result<Self> {
        if self.sharing_adapter_rank().is_none() {
            return Err(KvRoutingError::InvalidConfig(
                "the model has no sharing adapters to merge".into(),
            ));
        }
        for block in &mut self.blocks {
            for projection in block.projections_mut() {
                if projection.blocks.is_some() {
                    continue;
                }
                if let Some(delta) = projection.sharing.take() {
                    // Summed as `[out, in]` (`Wᵀ + scale · upᵀ downᵀ`) and used through its
                    // transposed view: the layout decode steps read fastest, in one pass.
                    let added = delta
                        .up
                        .val()
                        .transpose()
                        .matmul(delta.down.val().transpose())
                        .mul_scalar(delta.scale);
                    let weight = projection.weight.val();
                    let require_grad = weight.is_require_grad();
                    // A new leaf (on an autodiff backend the sum is a graph node, which a
                    // parameter cannot be), as trainable as the weight it replaces.
                    let merged = (weight.transpose() + added).transpose().detach();
                    projection.weight = Param::from_tensor(merged).set_require_grad(require_grad);
                }
            }
        }
        self.sharing_merged = true;
        Ok(self)
    }

    /// Whether the sharing adapters are merged into the weights
    /// ([`RoutedTransformer::with_sharing_adapters_merged`]).
    pub fn sharing_adapters_merged(&self) -> bool {
        self.sharing_merged
    }

    /// Refuses `route` on a model whose adapters are merged into its weights when the route
    /// shares nothing (it would need the weights before the merge).
    pub(crate) fn check_merged_route(&self, route: &crate::Route) -> crate::Result<()> {
        if self.sharing_merged && !route.shares() {
            return Err(KvRoutingError::InvalidRoute(format!(
                "route {route} shares no layer, and this model's sharing adapters are merged into its weights: it serves only routes that share (load it again for the full plan)"
            )));
        }
        Ok(())
    }

    /// The rank of the model's sharing adapters, if it has them.
    pub fn sharing_adapter_rank(&self) -> Option<usize> {
        self.blocks
            .first()
            .and_then(|b| b.attention.query.sharing.as_ref())
            .map(|delta| delta.down.lazy_shape().dims::<2>()[1])
    }

    /// The parameter ids of every sharing adapter's `up` matrix (block 0 first, in projection
    /// order): what an optimizer needs to give them a rate of their own (LoRA+). Empty for a
    /// model without adapters.
    pub fn sharing_adapter_up_ids(&self) -> Vec<ParamId> {
        self.blocks
            .iter()
            .flat_map(|block| block.projections())
            .filter_map(|projection| projection.sharing.as_ref().map(|delta| delta.up.id))
            .collect()
    }

    /// This model with only its sharing adapters requiring gradients (on an autodiff
    /// backend): training it changes nothing the full plan computes. A model without adapters
    /// is an error (it would have nothing to train).
    pub fn with_only_sharing_adapters_trainable(self) -> crate::Result<Self> {
        if self.sharing_adapter_rank().is_none() {
            return Err(KvRoutingError::InvalidConfig(
                "the model has no sharing adapters to train".into(),
            ));
        }
        let mut model = self.no_grad();
        for block in &mut model.blocks {
            for projection in block.projections_mut() {
                projection.sharing = projection
                    .sharing
                    .take()
                    .map(|delta| delta.map(&mut RequireGrad));
            }
        }
        Ok(model)
    }
}

/// Makes every parameter it visits require a gradient.
struct RequireGrad;

impl<B: Backend> ModuleMapper<B> for RequireGrad {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.set_require_grad(true), mapper)
    }
}
