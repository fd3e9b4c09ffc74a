//! Cost of one cache write (`CacheStep::put` of one token) at a small and a large capacity.
//! With a backend that writes in place the two are equal; a backend that copies the destination
//! on `slice_assign` (unpatched burn-flex 0.21.0) pays O(capacity) per step. See
//! patches/README.md and docs/benchmarks.md.
use burn::tensor::{Distribution, Tensor};
use kv_routing::{KeyValue, KvCacheLayout, KvCacheManager, KvStore, Route};
use kv_routing_backend::{device, Backend};
use std::time::Instant;

fn main() {
    let device = device();
    for capacity in [64usize, 1 << 16] {
        let layout = KvCacheLayout {
            batch_size: 1,
            n_layers: 1,
            n_kv_heads: 2,
            head_dim: 32,
            capacity,
        };
        let mut cache =
            KvCacheManager::<Backend>::new(layout, Route::identity(1).unwrap(), &device).unwrap();
        let t = Instant::now();
        for _ in 0..32 {
            let mut step = cache.begin_step(&[1], 1).unwrap();
            let r = || {
                Tensor::<Backend, 4>::random([1, 2, 1, 32], Distribution::Normal(0.0, 1.0), &device)
            };
            step.put(0, KeyValue::new(r(), r())).unwrap();
            step.commit().unwrap();
        }
        println!("capacity {capacity}: {:?} per step", t.elapsed() / 32);
    }
}
