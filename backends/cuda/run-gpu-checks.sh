#!/usr/bin/env bash
# Builds and runs, on a machine with an NVIDIA GPU, the CUDA conformance suite (with the
# CUDA-vs-CPU cross-backend check), the shared-cache example and the benchmarks on CUDA, then
# prints a short table.
# Usage: backends/cuda/run-gpu-checks.sh   (from anywhere; needs cargo and an NVIDIA driver)
set -uo pipefail
cd "$(dirname "$0")/../.."
log_dir=${GPU_CHECKS_LOG_DIR:-target/gpu-checks}
mkdir -p "$log_dir"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

declare -a names results seconds
run() {
    local name=$1; shift
    local start=$(date +%s)
    if "$@" >"$log_dir/$name.log" 2>&1; then results+=("pass"); else results+=("FAIL"); fi
    names+=("$name"); seconds+=("$(( $(date +%s) - start ))")
    tail -n 3 "$log_dir/$name.log"
}

run build cargo test --release -p kv-routing-cuda --features gpu --no-run
run conformance cargo test --release -p kv-routing-cuda --features gpu --test conformance
run example cargo run --release -p kv-routing-examples --no-default-features --features cuda \
    --example shared_cache
if [ -d benches ] && grep -q '^cuda' benches/Cargo.toml 2>/dev/null; then
    run benchmarks cargo bench -p kv-routing-benches --no-default-features --features cuda -- --quick
    # Markdown tables of the run (same format as docs/benchmarks.md) in $log_dir/bench-report.log.
    run bench-report cargo run --release -p kv-routing-benches --no-default-features \
        --features cuda --bin bench-report -- --svg "$log_dir/benchmarks-decode.svg"
    # Ratios to the full plan measured inside interleaved rounds, in $log_dir/bench-paired.log.
    run bench-paired cargo run --release -p kv-routing-benches --no-default-features \
        --features cuda --bin bench-paired -- --rounds 5 --groups decode,prefill,train,capacity
fi

echo
printf '%-16s %-6s %8s\n' check result seconds
for i in "${!names[@]}"; do
    printf '%-16s %-6s %8s\n' "${names[$i]}" "${results[$i]}" "${seconds[$i]}"
done
grep -h "test result" "$log_dir"/conformance.log 2>/dev/null
sed -n '/^plan/,/^$/p' "$log_dir/example.log" 2>/dev/null
[[ " ${results[*]} " != *" FAIL "* ]]
