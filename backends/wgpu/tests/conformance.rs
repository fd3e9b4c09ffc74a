//! The whole conformance suite on burn-wgpu (f32). CI runs it on Mesa's llvmpipe adapter with
//! `CUBECL_WGPU_DEFAULT_DEVICE=Cpu`.

kv_routing_conformance::conformance_suite!(kv_routing_wgpu::Backend, kv_routing_wgpu::device());
