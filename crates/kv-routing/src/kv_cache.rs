//! [`KvCacheManager`]: the KV cache of a batch of sequences under a route.
//!
//! # What lives where
//! - **Storage.** One key and one value tensor, `[batch, n_kv_heads, capacity, head_dim]`, per
//!   *source* layer of the route, allocated once at construction. Non-source layers own nothing:
//!   they read their source's storage. Nothing is duplicated between layers. The storage holds
//!   the cache's [`KvDtype`]: the model's float type (the default), another float type, or
//!   int8 codes with their block scales ([`crate::kv_quantization`]); keys/values are converted
//!   when written, and a step's reads of a converted layer are widened back to the model's
//!   type once per step and source layer, however many layers read it, except where the
//!   backend's attention reads the stored format in place ([`CacheStep`]'s
//!   [`KvStore::get_stored`]: int8 and half-precision floats on flex, no widened copy of the
//!   history).
//! - **Slots.** The batch shares one write cursor, [`KvCacheManager::len`]: a step of `t` tokens
//!   writes slots `len..len + t` of every source layer in place (no concatenation of the
//!   history). A sequence that brings fewer than `t` tokens to a step (a shorter prompt, a
//!   finished sequence) leaves the rest of its slots as *holes*, recorded on the host in
//!   `key_valid` and hidden from every query by the attention mask, so padding never leaks.
//! - **Positions.** Each sequence counts its own tokens ([`KvCacheManager::sequence_lengths`]);
//!   a token's rotary position is that count, not its slot, so holes do not shift positions.
//!   Keys are stored already rotated, at the source layer, with the position of the step that
//!   wrote them; a layer that reads a shared cache applies the *step's* positions to its own
//!   queries, never a position derived from how much its donor has appended.
//!
//! # Invariants
//! 1. `layers[l].is_some()` exactly for the sources of `route` (after construction and after
//!    every [`KvCacheManager::retarget`]).
//! 2. Slots `0..len` of every stored layer hold the keys/values of every token appended so far;
//!    slots at or beyond `len` are never read outside the step that is writing them.
//! 3. [`KvCacheManager::bytes`] is exactly the bytes of the tensors held:
//!    `|sources| * 2 * batch * n_kv_heads * capacity * row_bytes`, `row_bytes` the
//!    [`KvRowFormat::bytes`] of one head's row of one token (`head_dim * bytes_per_element` for
//!    a float type; codes and scales for int8).
//!
//! # All-or-nothing
//! A step ([`KvCacheManager::begin_step`]) validates everything it can (batch size, lengths,
//! capacity) before touching storage, and only [`CacheStep::commit`] advances `len`, the
//! sequence lengths and the validity record. A step that fails or is dropped before commit
//! leaves the cache as it was: its writes sit beyond `len` and are overwritten by the next step.
//! [`KvCacheManager::retarget`] checks the new route completely before dropping anything.
//!
//! # In-place writes
//! A step writes its slots with [`write_slots`] (flex: our own write; other
//! backends: `slice_assign`), in place only when the storage buffer is uniquely owned; otherwise
//! the whole layer is copied (O(capacity) per step instead of O(step)). The keys/values a step hands out are views of that storage, so a view
//! kept past its step forces the copy. The cache counts such writes
//! ([`KvCacheManager::copied_writes`]) and logs a warning (`log`) at the first. Whether the
//! backend writes a uniquely owned buffer in place at all is the backend's property, tested per
//! backend (`backends/{flex,ndarray}/tests/in_place_write.rs`,
//! `backends/wgpu/tests/conformance/in_place_write.rs`).

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::attention_mask::AttentionMask;
use crate::error::{KvRoutingError, Result};
use crate::kernels::cast_float;
use crate::key_value::{Int8KeyValue, KeyValue, StoredKv};
use crate::kv_dtype::{device_float_dtype, KvDtype, KvRowFormat};
use crate::kv_quantization::{quantize_rows, QuantizedRows};
use crate::kv_store::{check_layer, KvStore};
use crate::memory_budget::{checked_product, MemoryBudget};
use crate::route::Route;

/// Geometry of a [`KvCacheManager`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheLayout {
    /// Sequences in the batch.
    pub batch_size: usize,
    /// Layers of the model.
    pub n_layers: usize,
    /// Key/value heads per layer.
    pub n_kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Preallocated slots per sequence.
    pub capacity: usize,
}

impl KvCacheLayout {
    /// Bytes of one cached layer (keys and values) whose rows are stored as `row`.
    pub fn bytes_per_layer(&self, row: KvRowFormat) -> usize {
        2 * self.batch_size * self.n_kv_heads * self.capacity * row.bytes()
    }

    /// Bytes a cache of this geometry holds under `route` with rows stored as `row` (one
    /// layer's bytes per source layer): the one formula behind every KV memory figure, which
    /// [`KvCacheManager::bytes`] meets exactly.
    pub fn bytes_for(&self, route: &Route, row: KvRowFormat) -> usize {
        route.sources().len() * self.bytes_per_layer(row)
    }

    /// [`KvCacheLayout::bytes_for`] counted without overflow (`None`: more than `u128` holds).
    pub fn checked_bytes_for(&self, route: &Route, row: KvRowFormat) -> Option<u128> {
        checked_product(&[
            route.sources().len(),
            2,
            self.batch_size,
            self.n_kv_heads,
            self.capacity,
            row.bytes(),
        ])
    }

    fn validate(&self) -> Result<()> {
        let fields = [
            ("batch_size", self.batch_size),
            ("n_layers", self.n_layers),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("capacity", self.capacity),
        ];
        match fields.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(KvRoutingError::InvalidConfig(format!(
                "KV cache {name} must be >= 1"
            ))),
            None => Ok(()),
        }
    }
}

/// A preallocated, route-aware KV cache for a batch of sequences. See the module docs for its
/// contract.
#[derive(Debug)]
pub struct KvCacheManager<B: Backend> {
    layout: KvCacheLayout,
    route: Route,
    dtype: KvDtype,
    row_format: KvRowFormat,
    layers: Vec<Option<LayerStorage<B>>>,
    len: usize,
    sequence_lengths: Vec<usize>,
    /// `[batch, capacity]` row-major: whether a slot holds a token of that sequence.
    key_valid: Vec<bool>,
    device: B::Device,
    /// One per layer; every view of that layer's storage holds a clone (see "In-place writes").
    view_leases: Vec<Arc<()>>,
    /// Writes made while a view of the layer was alive.
    copied_writes: usize,
}

impl<B: Backend> KvCacheManager<B> {
    /// Allocates storage for the sources of `route` only. A geometry whose size overflows is
    /// refused ([`KvRoutingError::MemoryBudgetExceeded`]); see [`KvCacheManager::new_within`]
    /// for a limit.
    pub fn new(layout: KvCacheLayout, route: Route, device: &B::Device) -> Result<Self> {
        Self::new_within(layout, route, device, &MemoryBudget::UNLIMITED)
    }

    /// [`KvCacheManager::new`], refusing before any allocation a cache larger than `budget`
    /// (the error gives the bytes it needs).
    pub fn new_within(
        layout: KvCacheLayout,
        route: Route,
        device: &B::Device,
        budget: &MemoryBudget,
    ) -> Result<Self> {
        Self::with_dtype(layout, route, KvDtype::Native, device, budget)
    }

    /// [`KvCacheManager::new_within`] storing keys/values as `dtype` (see [`KvDtype`]).
    ///
    /// # Errors
    /// Those of [`KvCacheManager::new_within`], and [`KvRoutingError::InvalidConfig`] for a
    /// float type the backend cannot store.
    pub fn with_dtype(
        layout: KvCacheLayout,
        route: Route,
        dtype: KvDtype,
        device: &B::Device,
        budget: &MemoryBudget,
    ) -> Result<Self> {
        layout.validate()?;
        route.check_layers(layout.n_layers)?;
        let row_format = dtype.row_format::<B>(device, layout.head_dim)?;
        budget.check(
            &format!(
                "a KV cache of {} sequences x {} slots ({} cached layers, {dtype})",
                layout.batch_size,
                layout.capacity,
                route.sources().len()
            ),
            layout.checked_bytes_for(&route, row_format),
        )?;
        let shape = [
            layout.batch_size,
            layout.n_kv_heads,
            layout.capacity,
            layout.head_dim,
        ];
        let layers = (0..layout.n_layers)
            .map(|layer| {
                route
                    .is_source(layer)
                    .then(|| LayerStorage::zeros(shape, row_format, device))
            })
            .collect();
        Ok(Self {
            layout,
            route,
            dtype,
            row_format,
            layers,
            len: 0,
            sequence_lengths: vec![0; layout.batch_size],
            key_valid: vec![false; layout.batch_size * layout.capacity],
            device: device.clone(),
            view_leases: (0..layout.n_layers).map(|_| Arc::new(())).collect(),
            copied_writes: 0,
        })
    }

    /// What the cache stores per key/value.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// How the cache stores one head's row of one token, on its backend.
    pub fn row_format(&self) -> KvRowFormat {
        self.row_format
    }

    /// The cache geometry.
    pub fn layout(&self) -> KvCacheLayout {
        self.layout
    }

    /// The route the cache serves.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// Slots written so far (shared by the batch, holes included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been appended yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Preallocated slots per sequence.
    pub fn capacity(&self) -> usize {
        self.layout.capacity
    }

    /// Slots still free.
    pub fn remaining(&self) -> usize {
        self.layout.capacity - self.len
    }

    /// Tokens held per sequence; also the rotary position of each sequence's next token.
    pub fn sequence_lengths(&self) -> &[usize] {
        &self.sequence_lengths
    }

    /// The layers that hold storage, ascending.
    pub fn cached_layers(&self) -> Vec<usize> {
        (0..self.layout.n_layers)
            .filter(|&l| self.layers[l].is_some())
            .collect()
    }

    /// Bytes held by each layer (zero for layers that read another layer's cache).
    pub fn bytes_per_layer(&self) -> Vec<usize> {
        self.layers
            .iter()
            .map(|storage| storage.as_ref().map_or(0, LayerStorage::bytes))
            .collect()
    }

    /// Total bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes_per_layer().iter().sum()
    }

    /// Writes so far that found a view of their layer's storage still alive (a [`KeyValue`]
    /// from an earlier step kept by the caller), so that the backend had to copy the layer's
    /// whole storage instead of writing in place. Stays 0 when views are dropped after their
    /// step, as the model's forward passes do.
    pub fn copied_writes(&self) -> usize {
        self.copied_writes
    }

    /// Forgets every token (storage is kept and reused).
    pub fn clear(&mut self) {
        self.len = 0;
        self.sequence_lengths.fill(0);
        self.key_valid.fill(false);
    }

    /// Switches a live cache to `route`, whose sources must all be cached already.
    ///
    /// Storage of layers that are no longer sources is released at once; nothing is recomputed
    /// and generation continues from the same slots. Fails, changing nothing, when `route` has
    /// the wrong number of layers or needs a layer whose history is not cached.
    pub fn retarget(&mut self, route: Route) -> Result<()> {
        route.check_layers(self.layout.n_layers)?;
        if let Some(layer) = route
            .sources()
            .into_iter()
            .find(|&l| self.layers[l].is_none())
        {
            return Err(KvRoutingError::MissingKv {
                layer,
                reason: format!(
                    "is a source of the new route {route} but is not cached (cached layers: {:?}); its history would have to be recomputed",
                    self.cached_layers()
                ),
            });
        }
        for layer in 0..self.layout.n_layers {
            if !route.is_source(layer) {
                self.layers[layer] = None;
            }
        }
        self.route = route;
        Ok(())
    }

    /// Moves sequence `sequence` out of this cache into a cache of its own (same route, dtype,
    /// capacity, slots and history), leaving the other sequences here: how one sequence of a
    /// batch gets a route of its own
    /// ([`MixedPlanCache::retarget_sequence`](crate::MixedPlanCache::retarget_sequence)).
    /// Copies the stored rows of both parts once.
    ///
    /// # Errors
    /// [`KvRoutingError::InvalidLengths`] for a sequence outside the batch or the batch's only
    /// sequence (nothing would be left); the cache is unchanged.
    pub fn take_sequence(&mut self, sequence: usize) -> Result<Self> {
        let batch = self.layout.batch_size;
        if sequence >= batch || batch == 1 {
            return Err(KvRoutingError::InvalidLengths(format!(
                "cannot move sequence {sequence} out of a cache of {batch} sequences"
            )));
        }
        let layers: Vec<_> = self
            .layers
            .iter_mut()
            .map(|slot| {
                let (kept_rows, taken_rows) = slot.take()?.split(sequence);
                *slot = Some(kept_rows);
                Some(taken_rows)
            })
            .collect();
        let capacity = self.layout.capacity;
        let key_valid = self
            .key_valid
            .drain(sequence * capacity..(sequence + 1) * capacity)
            .collect();
        let length = self.sequence_lengths.remove(sequence);
        self.layout.batch_size -= 1;
        Ok(Self {
            layout: KvCacheLayout {
                batch_size: 1,
                ..self.layout
            },
            route: self.route.clone(),
            dtype: self.dtype,
            row_format: self.row_format,
            layers,
            len: self.len,
            sequence_lengths: vec![length],
            key_valid,
            device: self.device.clone(),
            view_leases: (0..self.layout.n_layers).map(|_| Arc::new(())).collect(),
            copied_writes: 0,
        })
    }

    /// Starts appending a step of `step_len` slots in which sequence `b` brings
    /// `new_tokens[b] <= step_len` tokens (the first `new_tokens[b]` slots; the rest are holes).
    ///
    /// Validates the batch size, the lengths and the capacity before anything is written.
    pub fn begin_step(
        &mut self,
        new_tokens: &[usize],
        step_len: usize,
    ) -> Result<CacheStep<'_, B>> {
        let batch = self.layout.batch_size;
        if new_tokens.len() != batch {
            return Err(KvRoutingError::ShapeMismatch {
                context: "tokens per sequence for a cache step (one entry per sequence)".into(),
                expected: vec![batch],
                actual: vec![new_tokens.len()],
            });
        }
        if step_len == 0 {
            return Err(KvRoutingError::InvalidLengths(
                "a cache step must append at least one slot".into(),
            ));
        }
        for (sequence, &n) in new_tokens.iter().enumerate() {
            if n > step_len {
                return Err(KvRoutingError::InvalidLengths(format!(
                    "sequence {sequence} brings {n} tokens to a step of {step_len} slots"
                )));
            }
            if n == 0 && self.sequence_lengths[sequence] == 0 {
                return Err(KvRoutingError::InvalidLengths(format!(
                    "sequence {sequence} has no tokens yet and brings none: its queries would see no key"
                )));
            }
        }
        if self.len + step_len > self.layout.capacity {
            return Err(KvRoutingError::CapacityExceeded {
                used: self.len,
                requested: step_len,
                capacity: self.layout.capacity,
            });
        }
        let positions = new_tokens
            .iter()
            .zip(&self.sequence_lengths)
            .flat_map(|(&n, &start)| {
                // Hole slots get a harmless position: their outputs are discarded and their
                // keys hidden.
                (0..step_len).map(move |i| if i < n { start + i } else { start })
            })
            .collect();
        let written = vec![false; self.layout.n_layers];
        let widened = (0..self.layout.n_layers).map(|_| None).collect();
        Ok(CacheStep {
            new_tokens: new_tokens.to_vec(),
            step_len,
            positions,
            written,
            widened,
            cache: self,
        })
    }
}

/// One step being appended to a [`KvCacheManager`]; see the module docs for its all-or-nothing
/// contract. Implements [`KvStore`] for the decoder's block loop.
#[derive(Debug)]
pub struct CacheStep<'a, B: Backend> {
    cache: &'a mut KvCacheManager<B>,
    new_tokens: Vec<usize>,
    step_len: usize,
    positions: Vec<usize>,
    written: Vec<bool>,
    /// Per source layer of a converted (not native) cache: its visible keys/values widened to
    /// the model's float type, made by the first reader and released by the last.
    widened: Vec<Option<KeyValue<B>>>,
}

impl<B: Backend> CacheStep<'_, B> {
    /// Slots this step appends.
    pub fn step_len(&self) -> usize {
        self.step_len
    }

    /// Rotary position of every slot of the step, row-major `[batch, step_len]`.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// Key slots visible to the step's queries: history plus the step itself.
    pub fn visible_len(&self) -> usize {
        self.cache.len + self.step_len
    }

    /// The step's attention mask: bottom-right causal over the visible slots, holes hidden.
    pub fn mask(&self) -> Result<AttentionMask<B>> {
        let batch = self.cache.layout.batch_size;
        let capacity = self.cache.layout.capacity;
        let visible = self.visible_len();
        let mut key_valid = Vec::with_capacity(batch * visible);
        for (sequence, &n) in self.new_tokens.iter().enumerate() {
            let row = &self.cache.key_valid[sequence * capacity..];
            key_valid.extend_from_slice(&row[..self.cache.len]);
            key_valid.extend((0..self.step_len).map(|i| i < n));
        }
        AttentionMask::causal_with_key_validity(
            &key_valid,
            batch,
            self.step_len,
            visible,
            &self.cache.device,
        )
    }

    /// Makes the step part of the cache. Fails, committing nothing, if a source layer of the
    /// route was not written.
    pub fn commit(self) -> Result<()> {
        if let Some(layer) = self
            .cache
            .route
            .sources()
            .into_iter()
            .find(|&l| !self.written[l])
        {
            return Err(KvRoutingError::MissingKv {
                layer,
                reason: "is a source of the cache's route but wrote no keys/values in this step"
                    .into(),
            });
        }
        let cache = self.cache;
        let capacity = cache.layout.capacity;
        for (sequence, &n) in self.new_tokens.iter().enumerate() {
            let start = sequence * capacity + cache.len;
            cache.key_valid[start..start + self.step_len]
                .iter_mut()
                .enumerate()
                .for_each(|(i, valid)| *valid = i < n);
            cache.sequence_lengths[sequence] += n;
        }
        cache.len += self.step_len;
        Ok(())
    }
}

impl<B: Backend> KvStore<B> for CacheStep<'_, B> {
    fn route(&self) -> &Route {
        &self.cache.route
    }

    fn put(&mut self, layer: usize, kv: KeyValue<B>) -> Result<()> {
        check_layer(&self.cache.route, layer)?;
        let layout = self.cache.layout;
        let expected = [
            layout.batch_size,
            layout.n_kv_heads,
            self.step_len,
            layout.head_dim,
        ];
        if kv.key.dims() != expected || kv.value.dims() != expected {
            return Err(KvRoutingError::ShapeMismatch {
                context: format!("keys/values written to the cache by layer {layer}"),
                expected: expected.to_vec(),
                actual: kv.key.dims().to_vec(),
            });
        }
        let start = self.cache.len;
        let storage = self.cache.layers[layer]
            .take()
            .ok_or_else(|| KvRoutingError::MissingKv {
                layer,
                reason: format!(
                    "is not cached under the route {}, so it must not compute keys/values",
                    self.cache.route
                ),
            })?;
        // Taking the storage out leaves its buffer uniquely owned, so backends write in place,
        // unless a view handed out earlier is still alive.
        if Arc::strong_count(&self.cache.view_leases[layer]) > 1 {
            if self.cache.copied_writes == 0 {
                log::warn!(
                    "kv-routing: layer {layer}'s cache storage is still viewed by a KeyValue from an earlier step; \
                     each such write copies the whole layer (drop the views before the next step)"
                );
            }
            self.cache.copied_writes += 1;
        }
        self.cache.layers[layer] = Some(storage.write(start, kv));
        self.written[layer] = true;
        Ok(())
    }

    fn get(&mut self, layer: usize) -> Result<KeyValue<B>> {
        let source = self.written_source(layer)?;
        if let Some(widened) = self.widened[source].take() {
            if self.cache.route.last_reader(source) != Some(layer) {
                self.widened[source] = Some(widened.clone());
            }
            return Ok(widened);
        }
        let visible = 0..self.visible_len();
        let storage = self.cache.layers[source]
            .as_ref()
            .expect("a written layer holds storage");
        let native = device_float_dtype::<B>(&self.cache.device);
        let kv = match storage {
            LayerStorage::Float(kv) if kv.key.dtype() == native => {
                return Ok(KeyValue::new(
                    slice_rows(&kv.key, visible.clone()),
                    slice_rows(&kv.value, visible),
                )
                .viewing(self.cache.view_leases[source].clone()));
            }
            LayerStorage::Float(kv) => KeyValue::new(
                cast_float(slice_rows(&kv.key, visible.clone()), native),
                cast_float(slice_rows(&kv.value, visible), native),
            ),
            LayerStorage::Int8 { key, value } => KeyValue::new(
                key.slice_rows(visible.clone()).dequantize(),
                value.slice_rows(visible).dequantize(),
            ),
        };
        if self.cache.route.last_reader(source) != Some(layer) {
            self.widened[source] = Some(kv.clone());
        }
        Ok(kv)
    }

    fn get_stored(&mut self, layer: usize) -> Result<StoredKv<B>> {
        let source = self.written_source(layer)?;
        if crate::kernels::reads_stored_kv::<B>() {
            let visible = 0..self.visible_len();
            let lease = self.cache.view_leases[source].clone();
            match &self.cache.layers[source] {
                Some(LayerStorage::Int8 { key, value }) => {
                    return Ok(StoredKv::Int8(
                        Int8KeyValue::new(
                            key.slice_rows(visible.clone()),
                            value.slice_rows(visible),
                        )
                        .viewing(lease),
                    ));
                }
                // The model's float type, or half precision under an f32 model: a view of the
                // rows as stored (the attention widens them as it reads), not a widened copy of
                // the history. (A wider cache than the model, f32 under f16, is narrowed once
                // per step below.)
                Some(LayerStorage::Float(kv))
                    if attends_in_place(
                        kv.key.dtype(),
                        device_float_dtype::<B>(&self.cache.device),
                    ) =>
                {
                    return Ok(StoredKv::Float(
                        KeyValue::new(
                            slice_rows(&kv.key, visible.clone()),
                            slice_rows(&kv.value, visible),
                        )
                        .viewing(lease),
                    ));
                }
                _ => {}
            }
        }
        self.get(layer).map(StoredKv::Float)
    }
}

impl<B: Backend> CacheStep<'_, B> {
    /// The source layer `layer` reads, once that source has written this step.
    fn written_source(&self, layer: usize) -> Result<usize> {
        check_layer(&self.cache.route, layer)?;
        let source = self.cache.route.source_of(layer);
        if !self.written[source] {
            return Err(KvRoutingError::MissingKv {
                layer,
                reason: format!("its source layer {source} has not written this step yet"),
            });
        }
        Ok(source)
    }
}

/// Whether flex's attention reads a cache stored in `stored` for a model computing in `native`
/// as it is: the same type, or half precision under f32.
fn attends_in_place(stored: DType, native: DType) -> bool {
    stored == native || (native == DType::F32 && matches!(stored, DType::F16 | DType::BF16))
}

/// One source layer's keys and values in the cache's dtype.
#[derive(Debug)]
enum LayerStorage<B: Backend> {
    /// A float type, the model's or another.
    Float(KeyValue<B>),
    /// int8 codes and block scales.
    Int8 {
        key: QuantizedRows<B>,
        value: QuantizedRows<B>,
    },
}

impl<B: Backend> LayerStorage<B> {
    /// Zeroed storage of `shape` (`[batch, heads, capacity, head_dim]`) holding `row`'s format.
    fn zeros(shape: [usize; 4], row: KvRowFormat, device: &B::Device) -> Self {
        match row.scale {
            None => Self::Float(KeyValue::new(
                Tensor::zeros(shape, (device, row.element)),
                Tensor::zeros(shape, (device, row.element)),
            )),
            Some((scale, _)) => {
                let dtypes = (row.element, scale);
                Self::Int8 {
                    key: QuantizedRows::zeros(shape, row.blocks(), dtypes, device),
                    value: QuantizedRows::zeros(shape, row.blocks(), dtypes, device),
                }
            }
        }
    }

    /// `kv` (the model's float type) converted to this storage's format and written at slot
    /// `start`.
    fn write(self, start: usize, kv: KeyValue<B>) -> Self {
        match self {
            Self::Float(storage) => {
                let dtype = storage.key.dtype();
                Self::Float(KeyValue::new(
                    crate::kernels::write_slots(storage.key, start, cast_float(kv.key, dtype)),
                    crate::kernels::write_slots(storage.value, start, cast_float(kv.value, dtype)),
                ))
            }
            Self::Int8 { key, value } => {
                let block = key.codes.dims()[3] / key.scales.dims()[3];
                let codes = key.codes.dtype();
                Self::Int8 {
                    key: key.write_rows(start, quantize_rows(kv.key, block, codes)),
                    value: value.write_rows(start, quantize_rows(kv.value, block, codes)),
                }
            }
        }
    }

    /// This storage without batch row `sequence`, and that row alone, as two storages with
    /// buffers of their own. (Slices and concatenations, not `select`: burn-wgpu 0.21's fused
    /// `select` read the wrong row here when two index tensors were queued together.)
    fn split(self, sequence: usize) -> (Self, Self) {
        match self {
            Self::Float(kv) => {
                let (key_kept, key_taken) = split_rows(kv.key, sequence, |t| t.mul_scalar(1.0));
                let (value_kept, value_taken) =
                    split_rows(kv.value, sequence, |t| t.mul_scalar(1.0));
                (
                    Self::Float(KeyValue::new(key_kept, value_kept)),
                    Self::Float(KeyValue::new(key_taken, value_taken)),
                )
            }
            Self::Int8 { key, value } => {
                let (key_kept, key_taken) = key.split_sequence(sequence);
                let (value_kept, value_taken) = value.split_sequence(sequence);
                (
                    Self::Int8 {
                        key: key_kept,
                        value: value_kept,
                    },
                    Self::Int8 {
                        key: key_taken,
                        value: value_taken,
                    },
                )
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::Float(kv) => tensor_bytes(&kv.key) + tensor_bytes(&kv.value),
            Self::Int8 { key, value } => key.bytes() + value.bytes(),
        }
    }
}

/// `tensor` (`[batch, ...]`) without batch row `sequence`, and that row alone, each in a buffer
/// of its own (`copy` makes a fresh tensor of a view: the row is written in place later).
pub(crate) fn split_rows<B: Backend, K: burn::tensor::BasicOps<B>>(
    tensor: Tensor<B, 4, K>,
    sequence: usize,
    copy: impl Fn(Tensor<B, 4, K>) -> Tensor<B, 4, K>,
) -> (Tensor<B, 4, K>, Tensor<B, 4, K>) {
    let [batch, a, b, c] = tensor.dims();
    let rows = |range: std::ops::Range<usize>| tensor.clone().slice([range, 0..a, 0..b, 0..c]);
    let taken = copy(rows(sequence..sequence + 1));
    let kept = match (sequence > 0, sequence + 1 < batch) {
        (true, true) => Tensor::cat(vec![rows(0..sequence), rows(sequence + 1..batch)], 0),
        (true, false) => copy(rows(0..sequence)),
        _ => copy(rows(sequence + 1..batch)),
    };
    (kept, taken)
}

/// Slots `rows` of every sequence and head of `[batch, heads, capacity, head_dim]` storage.
fn slice_rows<B: Backend>(storage: &Tensor<B, 4>, rows: std::ops::Range<usize>) -> Tensor<B, 4> {
    let [batch, heads, _, head_dim] = storage.dims();
    storage
        .clone()
        .slice([0..batch, 0..heads, rows, 0..head_dim])
}

/// The cache's append: `storage` `[batch, heads, capacity, head_dim]` with `values` `[batch,
/// heads, len, head_dim]` written at slots `start..start + len`, in place when `storage`'s buffer
/// is uniquely owned (see "In-place writes" in the module docs). Public so that a backend crate
/// can probe and test the very write the cache makes.
///
/// # Errors
/// [`KvRoutingError::ShapeMismatch`] when the shapes disagree or the slots run past `capacity`.
pub fn write_slots<B: Backend>(
    storage: Tensor<B, 4>,
    start: usize,
    values: Tensor<B, 4>,
) -> Result<Tensor<B, 4>> {
    let [batch, heads, capacity, head_dim] = storage.dims();
    let [v_batch, v_heads, len, v_head_dim] = values.dims();
    let fits = start.checked_add(len).is_some_and(|end| end <= capacity);
    if (v_batch, v_heads, v_head_dim) != (batch, heads, head_dim) || !fits {
        return Err(KvRoutingError::ShapeMismatch {
            context: format!("values written at slot {start} of a cache of {capacity} slots"),
            expected: vec![batch, heads, capacity.saturating_sub(start), head_dim],
            actual: values.dims().to_vec(),
        });
    }
    Ok(crate::kernels::write_slots(storage, start, values))
}

fn tensor_bytes<B: Backend>(tensor: &Tensor<B, 4>) -> usize {
    tensor.shape().num_elements() * tensor.dtype().size()
}
