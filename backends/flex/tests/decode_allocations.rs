//! A decode step copies no weight and no cache history: the bytes it allocates are counted by
//! this binary's global allocator, and they must not grow like the tied embedding (the LM head
//! reads it transposed) or the cached keys/values (attention reads them in place) when those
//! grow.
//!
//! Before the tied head multiplied by the transposed embedding *view*, every step allocated a
//! full copy of the `[vocab, d_model]` matrix (55% of a SmolLM2 decode step); a fused
//! attention op that gathers the visible cache into contiguous buffers would allocate the
//! history twice per layer, and an f32 model reading an f16 or int8 cache through a widened
//! copy would allocate it (or twice it) once per step. Each fails here.
//!
//! One test in the binary: the counter is global, and tests run on parallel threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn_flex::{Flex, FlexDevice};
use kv_routing::{CachePlan, KvDtype, Precision, RoutedTransformerConfig};

struct CountingAllocator;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// The most bytes one of 4 decode steps (batch 2) allocates, and the bytes of the cached
/// history, for a model with a tied vocabulary of `vocab` after a prompt of `history` tokens,
/// every `k`-th layer cached in `kv`.
fn worst_step_allocation(vocab: usize, history: usize, k: usize, kv: KvDtype) -> (usize, usize) {
    let device = FlexDevice;
    // A large tied vocabulary and a long history next to small layers; heads of 64 as in real
    // models (the attention scores, which a step must compute, are then about 5% of the
    // history they are computed from).
    let (d_model, layers) = (256, 4);
    let config = RoutedTransformerConfig::new(vocab, d_model, layers, 4, 256)
        .with_n_kv_heads(Some(2))
        .with_tie_embeddings(true)
        .with_max_seq_len(4096);
    let model = config
        .init::<Flex>(&device)
        .unwrap()
        .with_kv_dtype(kv)
        .unwrap();
    let route = CachePlan::every_kth(layers, k).unwrap().route();
    let mut cache = model.new_cache(2, history + 8, route).unwrap();
    let prompts: Vec<Vec<u32>> = (0..2)
        .map(|b| (0..history).map(|i| ((i * 7 + b) % vocab) as u32).collect())
        .collect();
    model.forward_cached_last(&prompts, &mut cache).unwrap();
    let history_bytes = cache.bytes() * history / cache.capacity();
    let mut worst = 0;
    for step in 0..4 {
        let before = ALLOCATED.load(Ordering::Relaxed);
        let logits = model
            .forward_cached_last(&[vec![step + 1], vec![step + 2]], &mut cache)
            .unwrap();
        worst = worst.max(ALLOCATED.load(Ordering::Relaxed) - before);
        drop(logits);
    }
    (worst, history_bytes)
}

/// A copy grows with what it copies: tripling the history or doubling the vocabulary would add
/// that much to a step. What a step must allocate (logits, activations, attention scores, and
/// the bounded packing buffers gemm's AVX-512 kernels take for the products they compute: 2.5
/// MB a step once, when batch-2 projections went through them) does not grow like either, so
/// the test compares steps of different sizes instead of a step with a fixed threshold.
#[test]
fn a_decode_step_allocates_neither_the_tied_embedding_nor_the_cache_history() {
    let embedding_bytes = |vocab: usize| vocab * 256 * 4;
    let kv_dtypes = [
        KvDtype::Native,
        KvDtype::Float(Precision::F16),
        KvDtype::Int8,
    ];
    for (plan, k, kv) in kv_dtypes
        .into_iter()
        .flat_map(|kv| [("full", 1, kv), ("every:2", 2, kv)])
    {
        let plan = format!("{plan} over a {kv} cache");
        let (base, base_history) = worst_step_allocation(16_384, 1024, k, kv);
        let (long, long_history) = worst_step_allocation(16_384, 3072, k, kv);
        let (wide, _) = worst_step_allocation(32_768, 1024, k, kv);
        let history_growth = long_history - base_history;
        let embedding_growth = embedding_bytes(32_768) - embedding_bytes(16_384);
        assert!(
            base < embedding_bytes(16_384),
            "{plan}: a decode step allocated {base} bytes, the tied embedding is {}",
            embedding_bytes(16_384)
        );
        assert!(
            long.saturating_sub(base) < history_growth / 4,
            "{plan}: 2048 more tokens of history ({history_growth} bytes) made a decode step \
             allocate {base} -> {long} bytes"
        );
        assert!(
            wide.saturating_sub(base) < embedding_growth / 4,
            "{plan}: a tied embedding {embedding_growth} bytes larger made a decode step \
             allocate {base} -> {wide} bytes"
        );
    }
}
