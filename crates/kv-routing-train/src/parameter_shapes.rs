//! The shapes of a module's parameters, by path, to check loaded records against the
//! configuration: the weights, and the optimizer moments (one per parameter, of its shape).
//!
//! Burn's `Module::load_record` takes each tensor of a record as it is, whatever its shape: a
//! checkpoint whose `config.json` and weights disagree (found by the checkpoint fuzz test,
//! `tests/fuzz_checkpoints.rs`) loaded, and then panicked deep inside Burn at the first forward
//! pass. Comparing the loaded parameters with those of the model the configuration builds turns
//! that into an error naming the parameter. AdamW's moments are taken as they are too: a
//! moment of the wrong shape (found by the same test's long run) panicked in the first step.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::record::{AdaptorRecord, AdaptorRecordV1};
use burn::optim::AdamW;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// Id, path and shape of every float parameter of `module`, in visiting order.
fn parameters<B: Backend, M: Module<B>>(module: &M) -> Vec<(ParamId, String, Vec<usize>)> {
    struct Parameters {
        path: Vec<String>,
        found: Vec<(ParamId, String, Vec<usize>)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Parameters {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            // The shape without initializing a lazy parameter (a model built only to learn
            // the shapes its record must have allocates nothing).
            self.found
                .push((param.id, self.path.join("."), param.lazy_shape().to_vec()));
        }
    }
    let mut parameters = Parameters {
        path: Vec::new(),
        found: Vec::new(),
    };
    module.visit(&mut parameters);
    parameters.found
}

/// Path and shape of every float parameter of `module`, in visiting order.
pub(crate) fn parameter_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    parameters::<B, M>(module)
        .into_iter()
        .map(|(_, path, shape)| (path, shape))
        .collect()
}

/// The first parameter of `loaded` whose shape differs from `expected` (what
/// [`parameter_shapes`] gave for the model the configuration builds), described.
pub(crate) fn shape_mismatch<B: Backend, M: Module<B>>(
    expected: &[(String, Vec<usize>)],
    loaded: &M,
) -> Option<String> {
    let loaded = parameter_shapes::<B, M>(loaded);
    if expected.len() != loaded.len() {
        return Some(format!(
            "{} parameters where the configuration has {}",
            loaded.len(),
            expected.len()
        ));
    }
    expected
        .iter()
        .zip(&loaded)
        .find(|(e, l)| e.1 != l.1)
        .map(|((path, shape), (_, found))| {
            format!("parameter `{path}` has shape {found:?}, the configuration gives {shape:?}")
        })
}

/// The first AdamW moment in `record` that has no parameter of `model` or not its shape,
/// described.
pub(crate) fn moment_mismatch<'a, B: AutodiffBackend, M: Module<B>>(
    record: impl IntoIterator<Item = (&'a ParamId, &'a AdaptorRecord<AdamW, B>)>,
    model: &M,
) -> Option<String> {
    let parameters: HashMap<ParamId, (String, Vec<usize>)> = parameters::<B, M>(model)
        .into_iter()
        .map(|(id, path, shape)| (id, (path, shape)))
        .collect();
    for (id, moments) in record {
        let Some((path, shape)) = parameters.get(id) else {
            return Some(format!(
                "moments for a parameter the model does not have ({id})"
            ));
        };
        let AdaptorRecord::V1(moments) = moments;
        macro_rules! shapes {
            ($($rank:ident),*) => {
                match moments {
                    $(AdaptorRecordV1::$rank(state) => {
                        let momentum = &state.momentum;
                        std::iter::once(momentum.moment_1.dims().to_vec())
                            .chain(std::iter::once(momentum.moment_2.dims().to_vec()))
                            .chain(momentum.max_moment_2.iter().map(|m| m.dims().to_vec()))
                            .collect::<Vec<_>>()
                    })*
                }
            };
        }
        let found = shapes!(Rank0, Rank1, Rank2, Rank3, Rank4, Rank5, Rank6, Rank7, Rank8);
        if let Some(wrong) = found.iter().find(|f| *f != shape) {
            return Some(format!(
                "the moments of parameter `{path}` have shape {wrong:?}, the parameter {shape:?}"
            ));
        }
    }
    None
}
