//! Same seed, same routes, same logits on ndarray (f32 and f64), flex and wgpu in one process.
//! The f64 ndarray run is the reference; the others are f32 and must agree within the f32
//! tolerance. (CUDA joins in `backends/cuda/tests/cross_backend.rs`.)

use kv_routing_conformance::cross_backend::{assert_same, fingerprint};
use kv_routing_conformance::support::Tolerance;

#[test]
fn same_seed_same_routes_same_logits_on_every_backend() {
    let reference =
        fingerprint::<burn_ndarray::NdArray<f64>>("ndarray-f64", &burn_ndarray::NdArrayDevice::Cpu);
    let f32_tolerance = Tolerance {
        abs: 5e-5,
        rel: 5e-5,
    };
    let others = [
        fingerprint::<burn_ndarray::NdArray<f32>>("ndarray-f32", &burn_ndarray::NdArrayDevice::Cpu),
        fingerprint::<burn_flex::Flex>("flex", &burn_flex::FlexDevice),
        fingerprint::<burn_wgpu::Wgpu>("wgpu", &burn_wgpu::WgpuDevice::DefaultDevice),
    ];
    for other in &others {
        assert_same(&reference, other, f32_tolerance);
    }
}
