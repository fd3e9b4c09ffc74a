//! Burn record files (named MessagePack, full precision) read from a checkpoint that may be
//! damaged: every failure is an [`HfError::Checkpoint`] naming the file, never a panic, an
//! abort on a huge allocation, or a model that fails later.
//!
//! Three guards, each found necessary by the checkpoint fuzz test
//! (`crates/kv-routing-train/tests/fuzz_checkpoints.rs`):
//! - [`checked_record_file`]: Burn's recorder sizes buffers by the lengths the file declares
//!   (a damaged length prefix requested 2^56 bytes and aborted the process), so the encoding
//!   is walked first and a length beyond the file refused.
//! - [`decode_without_panics`]: Burn 0.21 panics on some damaged records instead of returning
//!   its error (a parameter id that does not decode: `ParamId::deserialize` expects); the
//!   panic is caught and reported as the corrupt file it is.
//! - [`shape_mismatch`]: `Module::load_record` takes each tensor of a record as it is, whatever
//!   its shape: a checkpoint whose configuration and weights disagree loaded, then panicked
//!   deep inside Burn at the first forward pass. Comparing the loaded parameters with those
//!   of the model the configuration builds turns that into an error naming the parameter.
//!   [`parameters`] gives the ids as well, for records keyed by parameter (optimizer
//!   moments, checked by the training crate).

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::{HfError, Result};
use crate::msgpack_bounds::check_msgpack_bounds;

/// The recorder of checkpoint records: Burn's named MessagePack, full precision (f32).
pub fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// The path of the record file `name` in `dir`, once its MessagePack encoding is known to
/// declare no length beyond the file (Burn's recorder would allocate whatever it declares).
pub fn checked_record_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        return Err(HfError::checkpoint(dir, format!("{name} is missing")));
    }
    let bytes = std::fs::read(&path).map_err(|e| HfError::io(&path, e))?;
    check_msgpack_bounds(&bytes)
        .map_err(|e| HfError::checkpoint(dir, format!("{name} is corrupt: {e}")))?;
    Ok(path)
}

/// Runs one of Burn's record loads of the file `name` in `dir`, turning its error, or its
/// panic, into an error naming the file.
pub fn decode_without_panics<T, E: std::fmt::Display>(
    dir: &Path,
    name: &str,
    load: impl FnOnce() -> std::result::Result<T, E>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(HfError::checkpoint(
            dir,
            format!("{name} does not load: {e}"),
        )),
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("Burn's decoder panicked");
            Err(HfError::checkpoint(
                dir,
                format!("{name} is corrupt: {reason}"),
            ))
        }
    }
}

/// A float parameter of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterShape {
    /// Its id (the key of per-parameter records such as optimizer moments).
    pub id: ParamId,
    /// Its path of field names, dot-separated (`layers.0.attention.q.weight`).
    pub path: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// Every float parameter of `module`, in visiting order.
pub fn parameters<B: Backend, M: Module<B>>(module: &M) -> Vec<ParameterShape> {
    struct Parameters {
        path: Vec<String>,
        found: Vec<ParameterShape>,
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
            self.found.push(ParameterShape {
                id: param.id,
                path: self.path.join("."),
                shape: param.lazy_shape().to_vec(),
            });
        }
    }
    let mut parameters = Parameters {
        path: Vec::new(),
        found: Vec::new(),
    };
    module.visit(&mut parameters);
    parameters.found
}

/// The first parameter of `loaded` whose shape differs from `expected` (what [`parameters`]
/// gave for the model the configuration builds), described; `None` when all agree.
pub fn shape_mismatch<B: Backend, M: Module<B>>(
    expected: &[ParameterShape],
    loaded: &M,
) -> Option<String> {
    let loaded = parameters::<B, M>(loaded);
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
        .find(|(e, l)| e.shape != l.shape)
        .map(|(expected, found)| {
            format!(
                "parameter `{}` has shape {:?}, the configuration gives {:?}",
                expected.path, found.shape, expected.shape
            )
        })
}
