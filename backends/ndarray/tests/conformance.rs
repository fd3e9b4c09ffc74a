//! The whole conformance suite on burn-ndarray, in f32 and in f64.

mod f32 {
    kv_routing_conformance::conformance_suite!(
        burn_ndarray::NdArray<f32>,
        burn_ndarray::NdArrayDevice::Cpu
    );
}

mod f64 {
    kv_routing_conformance::conformance_suite!(
        burn_ndarray::NdArray<f64>,
        burn_ndarray::NdArrayDevice::Cpu
    );
}
