//! Cost of one cache write (`CacheStep::put` of one token) at a small and a large capacity, with
//! and without reading the visible keys/values after each write (as a decode step does, so the
//! storage's buffer also has a view of it in flight). With a backend that writes in place the
//! capacities cost the same; a write that copies its destination (burn-flex 0.21.0's own
//! `slice_assign`, which the cache no longer uses on flex, or a buffer still shared with a view)
//! pays O(capacity) per step. See docs/backends.md and docs/benchmarks.md. The device is synchronized before the clock stops.
use burn::tensor::{Distribution, Tensor};
use kv_routing::{KeyValue, KvCacheLayout, KvCacheManager, KvStore, Route};
use kv_routing_backend::{device, Backend};
use kv_routing_benches::sync;
use std::time::Instant;

const STEPS: u32 = 32;

fn main() {
    // Freed activations kept for reuse (an opt-in of programs; docs/backends.md).
    kv_routing_backend::retain_freed_memory();
    let device = device();
    // The first pass compiles kernels on the GPU backends (beyond what one warm-up step
    // covers); only the second is printed.
    for pass in 0..2 {
        for read in [false, true] {
            for capacity in [64usize, 1 << 16] {
                let layout = KvCacheLayout {
                    batch_size: 1,
                    n_layers: 1,
                    n_kv_heads: 2,
                    head_dim: 32,
                    capacity,
                };
                let mut cache =
                    KvCacheManager::<Backend>::new(layout, Route::identity(1).unwrap(), &device)
                        .unwrap();
                let random = || {
                    Tensor::<Backend, 4>::random(
                        [1, 2, 1, 32],
                        Distribution::Normal(0.0, 1.0),
                        &device,
                    )
                };
                // Warm-up: kernels compile on first use on the GPU backends.
                let warm = |cache: &mut KvCacheManager<Backend>| {
                    let mut step = cache.begin_step(&[1], 1).unwrap();
                    step.put(0, KeyValue::new(random(), random())).unwrap();
                    let seen = step.get(0).unwrap().key.sum();
                    step.commit().unwrap();
                    seen
                };
                sync(warm(&mut cache));
                let start = Instant::now();
                let mut seen = Tensor::<Backend, 1>::zeros([1], &device);
                for _ in 0..STEPS {
                    let mut step = cache.begin_step(&[1], 1).unwrap();
                    step.put(0, KeyValue::new(random(), random())).unwrap();
                    if read {
                        seen = seen + step.get(0).unwrap().key.sum();
                    }
                    step.commit().unwrap();
                }
                // One more write and read, then wait: every queued write has run.
                sync(warm(&mut cache) + seen);
                if pass == 0 {
                    continue;
                }
                println!(
                    "capacity {capacity:>5}, {}: {:?} per step",
                    if read { "write + read" } else { "write" },
                    start.elapsed() / (STEPS + 1)
                );
            }
        }
    }
}
