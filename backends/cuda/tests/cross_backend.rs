//! CUDA against the f64 ndarray reference: same seed, same routes, same logits (f32 tolerance).
//! Needs an NVIDIA GPU; run by `run-gpu-checks.sh`.

use kv_routing_conformance::cross_backend::{assert_same, fingerprint};
use kv_routing_conformance::support::Tolerance;

#[test]
fn cuda_matches_the_cpu_reference() {
    let reference =
        fingerprint::<burn_ndarray::NdArray<f64>>("ndarray-f64", &burn_ndarray::NdArrayDevice::Cpu);
    let cuda = fingerprint::<kv_routing_cuda::Backend>("cuda", &kv_routing_cuda::device());
    assert_same(
        &reference,
        &cuda,
        Tolerance {
            abs: 5e-5,
            rel: 5e-5,
        },
    );
}
