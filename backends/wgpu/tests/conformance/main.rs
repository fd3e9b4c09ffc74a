//! The whole conformance suite on burn-wgpu (f32), and the cross-backend check: the same seed
//! gives the same routes and the same logits on every backend compiled into this process
//! (ndarray f64 as the reference; ndarray f32, flex and wgpu within the f32 tolerance). CI runs it
//! on Mesa's llvmpipe adapter with `CUBECL_WGPU_DEFAULT_DEVICE=Cpu`. Without an adapter every
//! test here returns at once and the binary says so in one line ([`support`]).
//!
//! Both live in one test binary, with the in-place cache write's test ([`in_place_write`]),
//! because monomorphizing for the fusion backend takes minutes of compile time per binary
//! (the write's test alone took 416 s of CPU as its own binary on CI's class of machine).

// Every property case is a new model shape, and each new shape compiles its kernels on the
// software adapter (8 cases took 468 s on CI's class of machine): two cases here keep the
// property exercised on wgpu within CI's time; the CPU backends run 1000.
kv_routing_conformance::conformance_suite!(
    kv_routing_wgpu::Backend,
    device_or_skip = support::device_or_skip(),
    property_cases = 2
);

mod in_place_write;
mod support;

#[test]
fn same_seed_same_routes_same_logits_on_every_backend() {
    use kv_routing_conformance::cross_backend::{assert_same, fingerprint};
    use kv_routing_conformance::support::Tolerance;

    let reference =
        fingerprint::<burn_ndarray::NdArray<f64>>("ndarray-f64", &burn_ndarray::NdArrayDevice::Cpu);
    let mut others = vec![
        fingerprint::<burn_ndarray::NdArray<f32>>("ndarray-f32", &burn_ndarray::NdArrayDevice::Cpu),
        fingerprint::<burn_flex::Flex>("flex", &burn_flex::FlexDevice),
    ];
    // Without an adapter the CPU backends are still compared; the skip line says wgpu was not.
    if let Some(wgpu) = support::device_or_skip() {
        others.push(fingerprint::<kv_routing_wgpu::Backend>("wgpu", &wgpu));
    }
    for other in &others {
        assert_same(
            &reference,
            other,
            Tolerance {
                abs: 5e-5,
                rel: 5e-5,
            },
        );
    }
}
