//! The shapes of a module's parameters, by path, to check a loaded record against the
//! configuration.
//!
//! Burn's `Module::load_record` takes each tensor of a record as it is, whatever its shape: a
//! checkpoint whose `config.json` and weights disagree (found by the checkpoint fuzz test,
//! `tests/fuzz_checkpoints.rs`) loaded, and then panicked deep inside Burn at the first forward
//! pass. Comparing the loaded parameters with those of the model the configuration builds turns
//! that into an error naming the parameter.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Path and shape of every float parameter of `module`, in visiting order.
pub(crate) fn parameter_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Shapes {
        path: Vec<String>,
        found: Vec<(String, Vec<usize>)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.found
                .push((self.path.join("."), param.val().dims().to_vec()));
        }
    }
    let mut shapes = Shapes {
        path: Vec::new(),
        found: Vec::new(),
    };
    module.visit(&mut shapes);
    shapes.found
}

/// The first parameter whose shape in `loaded` differs from `expected`'s, described.
pub(crate) fn shape_mismatch<B: Backend, M: Module<B>>(expected: &M, loaded: &M) -> Option<String> {
    let expected = parameter_shapes::<B, M>(expected);
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
