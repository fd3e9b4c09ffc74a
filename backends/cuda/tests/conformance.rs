//! The whole conformance suite on burn-cuda (f32). Needs an NVIDIA GPU: CI only compiles it
//! (`--features gpu --no-run`); `backends/cuda/run-gpu-checks.sh` runs it on a GPU machine.

kv_routing_conformance::conformance_suite!(kv_routing_cuda::Backend, kv_routing_cuda::device());
