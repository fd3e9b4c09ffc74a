//! A decode step copies no weight and no cache history: the bytes it allocates are counted by
//! this binary's global allocator and must stay far below the size of the tied embedding (the
//! LM head reads it transposed) and of the cached keys/values (attention reads them in place).
//!
//! Before the tied head multiplied by the transposed embedding *view*, every step allocated a
//! full copy of the `[vocab, d_model]` matrix (55% of a SmolLM2 decode step); a fused
//! attention op that gathers the visible cache into contiguous buffers would allocate the
//! history twice per layer. Either fails here.
//!
//! One test in the binary: the counter is global, and tests run on parallel threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn_flex::{Flex, FlexDevice};
use kv_routing::{CachePlan, RoutedTransformerConfig};

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

#[test]
fn a_decode_step_allocates_neither_the_tied_embedding_nor_the_cache_history() {
    let device = FlexDevice;
    // A large tied vocabulary and a long history next to small layers; heads of 64 as in real
    // models (the attention scores, which a step must compute, are then about 5% of the
    // history they are computed from).
    let (vocab, d_model, layers, history) = (16_384, 256, 4, 2048);
    let config = RoutedTransformerConfig::new(vocab, d_model, layers, 4, 256)
        .with_n_kv_heads(Some(2))
        .with_tie_embeddings(true)
        .with_max_seq_len(4096);
    let model = config.init::<Flex>(&device).unwrap();
    let embedding_bytes = vocab * d_model * 4;
    for (plan, k) in [("full", 1), ("every:2", 2)] {
        let plan_route = CachePlan::every_kth(layers, k).unwrap().route();
        let mut cache = model.new_cache(2, history + 8, plan_route).unwrap();
        let prompts: Vec<Vec<u32>> = (0..2)
            .map(|b| (0..history).map(|i| ((i * 7 + b) % vocab) as u32).collect())
            .collect();
        model.forward_cached_last(&prompts, &mut cache).unwrap();
        let history_bytes = cache.bytes() * history / cache.capacity();
        let mut per_step = Vec::new();
        for step in 0..4 {
            let before = ALLOCATED.load(Ordering::Relaxed);
            let logits = model
                .forward_cached_last(&[vec![step + 1], vec![step + 2]], &mut cache)
                .unwrap();
            per_step.push(ALLOCATED.load(Ordering::Relaxed) - before);
            drop(logits);
        }
        let worst = *per_step.iter().max().unwrap();
        // Logits, activations and attention scores of two tokens: about 0.6 MB here.
        assert!(
            worst < embedding_bytes / 4,
            "{plan}: a decode step allocated {worst} bytes, the tied embedding is {embedding_bytes} ({per_step:?})"
        );
        assert!(
            worst < history_bytes / 4,
            "{plan}: a decode step allocated {worst} bytes, the cached history is {history_bytes} ({per_step:?})"
        );
    }
}
