//! The whole conformance suite on burn-cuda (f32), plus the cross-backend check against the f64
//! CPU reference, in one test binary (each test binary monomorphizes the suite for the fusion
//! backend, which takes minutes to compile). Needs an NVIDIA GPU: CI only compiles it
//! (`--features gpu --no-run`); `backends/cuda/run-gpu-checks.sh` runs it on a GPU machine.

kv_routing_conformance::conformance_suite!(
    kv_routing_cuda::Backend,
    kv_routing_cuda::device(),
    property_cases = 100
);

#[test]
fn cuda_matches_the_cpu_reference() {
    use kv_routing_conformance::cross_backend::{assert_same, fingerprint};
    use kv_routing_conformance::support::Tolerance;

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
