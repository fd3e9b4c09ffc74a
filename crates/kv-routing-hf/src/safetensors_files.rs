//! [`SafetensorsFiles`]: the weight files of a checkpoint directory, one `model.safetensors` or
//! shards listed by `model.safetensors.index.json`, read in place through memory maps.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use serde::Deserialize;

use crate::error::{HfError, Result};

/// Name of a single-file checkpoint's weights.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of a sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Length of the header-size prefix of a safetensors file.
const HEADER_PREFIX: usize = 8;

/// One mapped weight file and its parsed header.
struct WeightFile {
    path: PathBuf,
    map: Mmap,
    header_len: usize,
    metadata: Metadata,
}

/// The weight files of a checkpoint and which file holds each tensor.
pub struct SafetensorsFiles {
    files: Vec<WeightFile>,
    /// Tensor name → index into `files`.
    location: BTreeMap<String, usize>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl SafetensorsFiles {
    /// Opens the weights of the checkpoint in `dir`: the shards of its index when there is one,
    /// else `model.safetensors`.
    ///
    /// The files are memory-mapped: they must not be modified while loading.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        if index_path.is_file() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| HfError::io(&index_path, e))?;
            let index: ShardIndex = serde_json::from_str(&text)
                .map_err(|e| HfError::config(&index_path, e.to_string()))?;
            let mut shard_names: Vec<&String> = index.weight_map.values().collect();
            shard_names.sort();
            shard_names.dedup();
            let files = shard_names
                .iter()
                .map(|name| WeightFile::open(&dir.join(name)))
                .collect::<Result<Vec<_>>>()?;
            let mut location = BTreeMap::new();
            for (tensor, shard) in &index.weight_map {
                let file = shard_names.binary_search(&shard).expect("collected above");
                if files[file].metadata.info(tensor).is_none() {
                    return Err(HfError::MissingTensor {
                        name: tensor.clone(),
                        searched: format!("{INDEX_FILE} places it in {shard}"),
                    });
                }
                location.insert(tensor.clone(), file);
            }
            // A shard tensor the index does not list would be silently unused.
            for (file, weights) in files.iter().enumerate() {
                for name in weights.metadata.tensors().into_keys() {
                    if location.get(&name) != Some(&file) {
                        return Err(HfError::config(
                            &index_path,
                            format!(
                                "tensor `{name}` in {} is not in its weight_map",
                                weights.path.display()
                            ),
                        ));
                    }
                }
            }
            return Ok(Self { files, location });
        }
        let single = dir.join(SINGLE_FILE);
        if !single.is_file() {
            return Err(HfError::io(
                dir,
                format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory"),
            ));
        }
        let file = WeightFile::open(&single)?;
        let location = file
            .metadata
            .tensors()
            .into_keys()
            .map(|name| (name, 0))
            .collect();
        Ok(Self {
            files: vec![file],
            location,
        })
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    /// Values held by all tensors together.
    pub fn total_values(&self) -> usize {
        self.location
            .iter()
            .filter_map(|(name, &f)| self.files[f].metadata.info(name))
            .map(|info| info.shape.iter().product::<usize>())
            .sum()
    }

    /// The file holding tensor `name`, for messages.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.location
            .get(name)
            .map(|&f| self.files[f].path.as_path())
    }

    /// Tensor `name` in its stored type (F32, F16 or BF16), shape included: nothing is widened
    /// on the host, so a half-precision checkpoint loaded in half precision never holds an f32
    /// copy, and the device conversion (when the types differ) is the only one.
    pub fn read(&self, name: &str) -> Result<TensorData> {
        let file = &self.files[*self
            .location
            .get(name)
            .ok_or_else(|| HfError::MissingTensor {
                name: name.into(),
                searched: self.searched(),
            })?];
        let info = file.metadata.info(name).expect("indexed names exist");
        let start = HEADER_PREFIX + file.header_len;
        let bytes = &file.map[start + info.data_offsets.0..start + info.data_offsets.1];
        let shape = info.shape.clone();
        Ok(match info.dtype {
            Dtype::F32 => TensorData::new(decode(bytes, f32::from_le_bytes), shape),
            Dtype::F16 => TensorData::new(decode(bytes, f16::from_le_bytes), shape),
            Dtype::BF16 => TensorData::new(decode(bytes, bf16::from_le_bytes), shape),
            other => {
                return Err(HfError::TensorDtype {
                    name: name.into(),
                    dtype: format!("{other:?}"),
                })
            }
        })
    }

    fn searched(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|f| {
                f.path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.join(", ")
    }
}

impl WeightFile {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| HfError::io(path, e))?;
        // SAFETY: the map is read-only; the caller is told not to modify checkpoint files while
        // they load (a concurrent truncation would fault, as with any mmap reader).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| HfError::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| HfError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            header_len,
            metadata,
        })
    }
}

/// Little-endian elements of `N` bytes each, read by `convert` (the file's bytes need not be
/// aligned for `T`, so they are read element by element rather than cast).
fn decode<const N: usize, T>(bytes: &[u8], convert: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|chunk| convert(chunk.try_into().expect("chunks_exact")))
        .collect()
}
