//! [`GgufFile`]: a GGUF file (llama.cpp's model format, versions 2 and 3) read through a
//! memory map: its key-value metadata, its tensor directory, and each tensor's values.
//!
//! # Layout
//! `GGUF` magic, `u32` version, `u64` tensor count, `u64` metadata count; the metadata (key
//! string, `u32` value type, value); one entry per tensor (name, `u32` rank, `u64` dims with
//! the innermost first, `u32` ggml type, `u64` offset); padding to `general.alignment`
//! (default 32); the tensor data, each tensor at its offset from the start of that section.
//! Strings are a `u64` length and UTF-8 bytes; everything is little-endian.
//!
//! # Damaged files
//! Every length, count and offset is checked against the bytes that remain before it is used,
//! so a truncated or corrupted file is an [`HfError::Gguf`] naming what is wrong, never a
//! panic, and nothing is allocated beyond a small multiple of the file's size (an array's
//! count is checked against the bytes that could hold it; tensor data is read in place).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dequantize::dequantize;
use super::ggml_type::GgmlType;
use super::metadata::{MetadataArray, MetadataValue};
use crate::error::{HfError, Result};

/// The magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Alignment of the data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// Deepest nesting of arrays in metadata (real files use 1).
const MAX_ARRAY_DEPTH: usize = 4;

/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;

/// One tensor of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Dimensions as stored: innermost (contiguous) first, so a row-major `[rows, cols]`
    /// matrix is `[cols, rows]`.
    pub dims: Vec<usize>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute position of the data in the file.
    pub start: usize,
    /// Bytes of data, when the type's block layout is known.
    pub len: Option<usize>,
}

impl TensorInfo {
    /// Number of values.
    pub fn n_values(&self) -> usize {
        self.dims.iter().product()
    }

    /// Row-major shape (outermost first): the reverse of [`TensorInfo::dims`].
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file; tensor data stays in the memory map until it is read.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    version: u32,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Whether `path` is to be read as a GGUF file: a file named `*.gguf` (whatever it holds, so
/// that a damaged one reaches the parser's error instead of being taken for a directory), or
/// any file that starts with the GGUF magic.
pub fn is_gguf_file(path: &Path) -> bool {
    use std::io::Read;
    if !path.is_file() {
        return false;
    }
    if path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == GGUF_MAGIC
}

impl GgufFile {
    /// Maps and parses `path`. The file must not be modified while it is open.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| HfError::io(path, e))?;
        // SAFETY: read-only map; as with safetensors checkpoints, the caller must not modify the
        // file while it is open (a concurrent truncation would fault).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| HfError::io(path, e))?;
        let parsed = Parser::new(&map)
            .parse_header()
            .map_err(|message| HfError::Gguf {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            map,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata entry, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.metadata
    }

    /// The value of metadata `key`.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    /// The tensor directory, by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// Tensor `name`'s entry and its stored bytes, when its type is one this crate reads.
    fn stored(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| HfError::MissingTensor {
                name: name.into(),
                searched: self.path.display().to_string(),
            })?;
        let len = info.len.filter(|_| info.ggml_type.is_supported());
        let len = len.ok_or_else(|| unsupported(name, info))?;
        Ok((info, &self.map[info.start..info.start + len]))
    }

    /// A copy of the bytes of tensor `name` as stored, when its type is one this crate reads
    /// (its pages of the map released after the copy, see [`GgufFile::release`]).
    pub fn read_raw(&self, name: &str) -> Result<(GgmlType, Vec<u8>)> {
        let (info, bytes) = self.stored(name)?;
        let bytes = bytes.to_vec();
        self.release(info.start, bytes.len());
        Ok((info.ggml_type, bytes))
    }

    /// Drops the mapped pages of `len` bytes from `start` from this process's resident memory
    /// once their tensor has been copied out: a loaded model then holds its weights once, not
    /// once in its own buffers and once in the map's pages until the file is closed (the peak of
    /// a load would be twice the weights). The pages come back from the file if read again.
    fn release(&self, start: usize, len: usize) {
        #[cfg(unix)]
        {
            const PAGE: usize = 4096;
            let first = start / PAGE * PAGE;
            let end = (start + len).min(self.map.len());
            // SAFETY: a read-only map of a file: MADV_DONTNEED makes the next read of these
            // pages fault them in from the file again, with the same bytes (the file must not
            // change while it is open, as for the map itself); no reference into them is
            // written through.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    first,
                    end.saturating_sub(first),
                )
            };
        }
        #[cfg(not(unix))]
        let _ = (start, len);
    }

    /// The values of tensor `name` as f32, in row-major order of [`TensorInfo::shape`].
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (info, bytes) = self.stored(name)?;
        let values = dequantize(info.ggml_type, bytes, info.n_values());
        self.release(info.start, bytes.len());
        values.ok_or_else(|| unsupported(name, info))
    }
}

/// The error for tensor `name` of a type this crate does not read.
fn unsupported(name: &str, info: &TensorInfo) -> HfError {
    HfError::GgufTensorType {
        name: name.into(),
        ggml_type: info.ggml_type.name(),
        supported: supported_type_names(),
    }
}

/// `F32, F16, ...`: the GGUF tensor types this crate reads, for messages.
pub fn supported_type_names() -> String {
    let names: Vec<String> = GgmlType::SUPPORTED.iter().map(|t| t.name()).collect();
    names.join(", ")
}

/// Tensors must not share bytes: the sizes they claim are what a loader checks a configuration
/// against before allocating, and overlapping entries would let a small file claim any size.
fn reject_overlaps(tensors: &BTreeMap<String, TensorInfo>) -> Parsed<()> {
    let mut spans: Vec<(usize, usize, &str)> = tensors
        .iter()
        .filter_map(|(name, info)| {
            info.len
                .map(|len| (info.start, info.start + len, name.as_str()))
        })
        .collect();
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let ((_, end, first), (start, _, second)) = (pair[0], pair[1]);
        if start < end {
            return Err(format!(
                "tensors `{first}` and `{second}` overlap (bytes {start}..{end})"
            ));
        }
    }
    Ok(())
}

struct Header {
    version: u32,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: BTreeMap<String, TensorInfo>,
}

/// A cursor over the file's bytes whose every read is bounds-checked.
struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

type Parsed<T> = std::result::Result<T, String>;

impl<'a> Parser<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize, what: &str) -> Parsed<&'a [u8]> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {}, {} remain",
                self.at,
                self.remaining()
            ));
        }
        let slice = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Parsed<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: &str) -> Parsed<u32> {
        Ok(u32::from_le_bytes(self.fixed(what)?))
    }

    fn u64(&mut self, what: &str) -> Parsed<u64> {
        Ok(u64::from_le_bytes(self.fixed(what)?))
    }

    /// A count of items each at least `min_item_bytes` long, checked against what remains.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Parsed<usize> {
        let count = self.u64(what)?;
        let fits = (self.remaining() / min_item_bytes.max(1)) as u64;
        if count > fits {
            return Err(format!(
                "{what} is {count}, but the {} bytes left hold at most {fits}",
                self.remaining()
            ));
        }
        Ok(count as usize)
    }

    fn string(&mut self, what: &str) -> Parsed<String> {
        let len = self.count(what, 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn parse_header(mut self) -> Parsed<Header> {
        let magic: [u8; 4] = self.fixed("the magic")?;
        if magic != GGUF_MAGIC {
            return Err(format!("not a GGUF file (starts with {magic:02x?})"));
        }
        let version = self.u32("the version")?;
        match version {
            2 | 3 => {}
            1 => return Err("GGUF version 1 is not supported (re-convert the model)".into()),
            v if v != 0 && v.swap_bytes() <= 3 => {
                return Err("big-endian GGUF files are not supported".into())
            }
            v => return Err(format!("unknown GGUF version {v}")),
        }
        // The smallest tensor entry: empty name, rank 1, type, offset.
        let n_tensors = self.count("the tensor count", 8 + 4 + 8 + 4 + 8)?;
        // The smallest metadata entry: empty key, type, one byte of value.
        let n_metadata = self.count("the metadata count", 8 + 4 + 1)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_metadata {
            let key = self.string("a metadata key")?;
            let value = self.value(&key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(format!("metadata key `{key}` appears twice"));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(MetadataValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(other) => {
                return Err(format!(
                    "general.alignment must be a power of two uint32, got {other:?}"
                ))
            }
        };
        let mut entries = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            entries.push(self.tensor_entry(alignment)?);
        }
        let data_start = (self.at as u64).next_multiple_of(alignment);
        let mut tensors = BTreeMap::new();
        for (name, dims, ggml_type, offset) in entries {
            let info = self.place(&name, dims, ggml_type, data_start, offset)?;
            if tensors.insert(name.clone(), info).is_some() {
                return Err(format!("tensor `{name}` appears twice"));
            }
        }
        reject_overlaps(&tensors)?;
        Ok(Header {
            version,
            metadata,
            tensors,
        })
    }

    fn tensor_entry(&mut self, alignment: u64) -> Parsed<(String, Vec<u64>, GgmlType, u64)> {
        let name = self.string("a tensor name")?;
        let rank = self.u32("a tensor rank")?;
        if rank == 0 || rank > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {rank} dimensions (1 to {MAX_DIMS})"
            ));
        }
        let dims = (0..rank)
            .map(|_| self.u64("a tensor dimension"))
            .collect::<Parsed<Vec<u64>>>()?;
        let ggml_type = GgmlType(self.u32("a tensor type")?);
        let offset = self.u64("a tensor offset")?;
        if !offset.is_multiple_of(alignment) {
            return Err(format!(
                "tensor `{name}` starts at offset {offset}, not a multiple of the alignment {alignment}"
            ));
        }
        Ok((name, dims, ggml_type, offset))
    }

    /// Checks a tensor's dims and that its data lies inside the file.
    fn place(
        &self,
        name: &str,
        dims: Vec<u64>,
        ggml_type: GgmlType,
        data_start: u64,
        offset: u64,
    ) -> Parsed<TensorInfo> {
        let file_len = self.bytes.len() as u64;
        if let Some(&zero) = dims.iter().find(|&&d| d == 0) {
            return Err(format!("tensor `{name}` has a dimension of {zero}"));
        }
        let n_values = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= file_len.saturating_mul(8))
            .ok_or_else(|| {
                format!("tensor `{name}` has dims {dims:?}, far more values than the file holds")
            })?;
        let start = data_start
            .checked_add(offset)
            .filter(|&s| s <= file_len)
            .ok_or_else(|| {
                format!("tensor `{name}` starts at {data_start} + {offset}, past the end of the file ({file_len} bytes)")
            })?;
        let len = match ggml_type.block_geometry() {
            Some((block_values, block_bytes)) => {
                if !dims[0].is_multiple_of(block_values as u64) {
                    return Err(format!(
                        "tensor `{name}` ({ggml_type}) has rows of {} values, not a multiple of its block of {block_values}",
                        dims[0]
                    ));
                }
                let len = n_values / block_values as u64 * block_bytes as u64;
                if start + len > file_len {
                    return Err(format!(
                        "tensor `{name}` ({ggml_type}, dims {dims:?}) needs bytes {start}..{}, past the end of the file ({file_len} bytes)",
                        start + len
                    ));
                }
                Some(len as usize)
            }
            None => None,
        };
        Ok(TensorInfo {
            dims: dims.into_iter().map(|d| d as usize).collect(),
            ggml_type,
            start: start as usize,
            len,
        })
    }

    fn value(&mut self, key: &str, depth: usize) -> Parsed<MetadataValue> {
        let value_type = self.u32("a metadata value type")?;
        Ok(match value_type {
            0 => MetadataValue::U8(self.fixed::<1>(key)?[0]),
            1 => MetadataValue::I8(self.fixed::<1>(key)?[0] as i8),
            2 => MetadataValue::U16(u16::from_le_bytes(self.fixed(key)?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.fixed(key)?)),
            4 => MetadataValue::U32(u32::from_le_bytes(self.fixed(key)?)),
            5 => MetadataValue::I32(i32::from_le_bytes(self.fixed(key)?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.fixed(key)?)),
            7 => MetadataValue::Bool(self.boolean(key)?),
            8 => MetadataValue::String(self.string(key)?),
            9 => MetadataValue::Array(self.array(key, depth + 1)?),
            10 => MetadataValue::U64(u64::from_le_bytes(self.fixed(key)?)),
            11 => MetadataValue::I64(i64::from_le_bytes(self.fixed(key)?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.fixed(key)?)),
            other => return Err(format!("metadata `{key}` has unknown value type {other}")),
        })
    }

    fn boolean(&mut self, key: &str) -> Parsed<bool> {
        match self.fixed::<1>(key)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("metadata `{key}` has a bool byte of {other}")),
        }
    }

    fn array(&mut self, key: &str, depth: usize) -> Parsed<MetadataArray> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(format!(
                "metadata `{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}"
            ));
        }
        let element_type = self.u32("an array element type")?;
        let min_bytes = match element_type {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            other => {
                return Err(format!(
                    "metadata `{key}` is an array of unknown type {other}"
                ))
            }
        };
        let n = self.count(key, min_bytes)?;
        macro_rules! numbers {
            ($variant:ident, $ty:ty) => {{
                let bytes = self.take(n * std::mem::size_of::<$ty>(), key)?;
                MetadataArray::$variant(
                    bytes
                        .chunks_exact(std::mem::size_of::<$ty>())
                        .map(|c| <$ty>::from_le_bytes(c.try_into().expect("exact chunk")))
                        .collect(),
                )
            }};
        }
        Ok(match element_type {
            0 => numbers!(U8, u8),
            1 => numbers!(I8, i8),
            2 => numbers!(U16, u16),
            3 => numbers!(I16, i16),
            4 => numbers!(U32, u32),
            5 => numbers!(I32, i32),
            6 => numbers!(F32, f32),
            10 => numbers!(U64, u64),
            11 => numbers!(I64, i64),
            12 => numbers!(F64, f64),
            7 => MetadataArray::Bool((0..n).map(|_| self.boolean(key)).collect::<Parsed<_>>()?),
            8 => MetadataArray::String((0..n).map(|_| self.string(key)).collect::<Parsed<_>>()?),
            _ => MetadataArray::Array(
                (0..n)
                    .map(|_| self.array(key, depth + 1))
                    .collect::<Parsed<_>>()?,
            ),
        })
    }
}
