#!/usr/bin/env bash
# The retrofit pipeline of docs/results.md ("Retrofit recipes on SmolLM2-135M") in one command,
# resumable stage by stage: run it again after a cut and it continues where it stopped (a
# training stage from its last checkpoint, bit-exact; an evaluation from its start).
#
#   1. phase 1: `--recipe sharing-adapters` from the GGUF file (1,800 steps of 512 tokens);
#      with CURVE_EVERY=N, it stops every N steps for a curve point (every:2 on 12 windows and
#      20 passkeys of ~800 tokens, RUNS/evals/phase1-stepS), results.md's curves;
#   2. its every:2 perplexity and ~800-token passkeys;
#   3. phase 2 on retrieval episodes (`retrieval_episodes.py --min-gap 400 --max-gap 7000`):
#      `--recipe sharing-adapters-long --steps 240`, with `--distill-focus 1` and without;
#   4. each phase-2 end point under the targets' protocol: every:2 with passkeys of ~800 and
#      ~2,000 tokens, then full, every:3 and every:4 perplexity.
#
# Each stage's wall-clock goes to RUNS/pipeline.log as it ends, each evaluation to
# RUNS/evals/NAME/eval.json; the summary at the end reads them back.
#
# Usage: retrofit_pipeline.sh KV_BINARY GGUF CORPUS_DIR RUNS
#   CORPUS_DIR holds train.txt and heldout.txt (prepare_corpus.py).
# A quick check of the script itself (minutes, not hours): PHASE1_STEPS=2 PHASE2_STEPS=2
#   EVAL_BATCHES=1 PASSKEYS=2 retrofit_pipeline.sh ...
# PHASE1_FLAGS adds flags to phase 1 (a variant of the recipe: use another RUNS directory),
#   e.g. PHASE1_FLAGS="--distill-hidden-weight 30"; PHASE2_FLAGS to both phase-2 runs.
set -euo pipefail

if [ $# -ne 4 ]; then
    sed -n '2,25p' "$0" >&2
    exit 2
fi
kv=$1 gguf=$2 corpus=$3 runs=$4
phase1_steps=${PHASE1_STEPS:-1800}
phase2_steps=${PHASE2_STEPS:-240}
eval_batches=${EVAL_BATCHES:-12}
passkeys=${PASSKEYS:-100}
curve_every=${CURVE_EVERY:-0}
read -r -a phase1_flags <<<"${PHASE1_FLAGS:-}"
read -r -a phase2_flags <<<"${PHASE2_FLAGS:-}"
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$runs/evals"

log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$runs/pipeline.log"; }

# train_until OUT STOP ARGS...: a new run with ARGS, or the run in OUT continued, up to step
# STOP with a checkpoint there (STOP empty: to the end).
train_until() {
    local out=$1 stop=$2
    shift 2
    local stop_flags=()
    [ -n "$stop" ] && stop_flags=(--stop-at "$stop")
    if [ -e "$out/checkpoint" ]; then
        log "resuming $out${stop:+ up to step $stop}"
        "$kv" train --resume --quiet --out "$out" ${stop_flags[@]+"${stop_flags[@]}"}
    else
        log "training $out${stop:+ up to step $stop}"
        "$kv" train "$@" --quiet --out "$out" ${stop_flags[@]+"${stop_flags[@]}"}
    fi
}

# train OUT ARGS...: train_until the end; OUT/done marks it.
train() {
    local out=$1 start
    shift
    [ -e "$out/done" ] && return
    start=$(date +%s)
    train_until "$out" "" "$@"
    touch "$out/done"
    log "$out: done, $(($(date +%s) - start)) s in this call"
}

# checkpoint_step OUT: the step of OUT's checkpoint (0 without one).
checkpoint_step() {
    if [ -e "$1/checkpoint/state.json" ]; then
        python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' \
            "$1/checkpoint/state.json"
    else
        echo 0
    fi
}

# evaluate NAME CHECKPOINT ARGS...: skipped when RUNS/evals/NAME/eval.json exists.
evaluate() {
    local name=$1 checkpoint=$2 start
    shift 2
    [ -e "$runs/evals/$name/eval.json" ] && return
    start=$(date +%s)
    "$kv" eval --checkpoint "$checkpoint" --heldout "$corpus/heldout.txt" --seq-len 512 \
        --batch-size 4 --out "$runs/evals/$name" "$@"
    log "evaluation $name: $(($(date +%s) - start)) s"
}

phase1_args=(--init-from "$gguf" --data "$corpus/train.txt" --recipe sharing-adapters
    --steps "$phase1_steps" --seed 0 --eval-every 100000 --eval-batches 1 --checkpoint-every 50
    ${phase1_flags[@]+"${phase1_flags[@]}"})
if [ "$curve_every" -gt 0 ] && [ ! -e "$runs/phase1/done" ]; then
    for ((step = curve_every; step < phase1_steps; step += curve_every)); do
        # A curve point the run has passed (its checkpoint is later) cannot be taken any more.
        [ "$(checkpoint_step "$runs/phase1")" -gt "$step" ] && continue
        if [ "$(checkpoint_step "$runs/phase1")" -lt "$step" ]; then
            start=$(date +%s)
            train_until "$runs/phase1" "$step" "${phase1_args[@]}"
            log "$runs/phase1: step $step, $(($(date +%s) - start)) s in this call"
        fi
        evaluate "phase1-step$step" "$runs/phase1/checkpoint" \
            --batches $((eval_batches < 3 ? eval_batches : 3)) --plans every:2 \
            --passkey $((passkeys < 20 ? passkeys : 20)) --passkey-filler 30
    done
fi
train "$runs/phase1" "${phase1_args[@]}"
evaluate phase1-every2 "$runs/phase1/checkpoint" --batches "$eval_batches" --plans every:2 \
    --passkey "$passkeys" --passkey-filler 30

episodes=$corpus/train-retrieval-long.txt
if [ ! -e "$episodes" ]; then
    python3 "$here/retrieval_episodes.py" "$corpus/train.txt" "$episodes.partial" \
        --min-gap 400 --max-gap 7000 --seed 0
    mv "$episodes.partial" "$episodes"
fi

for focus in 1 0; do
    run=$runs/phase2-focus$focus
    train "$run" --init-from "$runs/phase1/checkpoint" --data "$episodes" \
        --recipe sharing-adapters-long --steps "$phase2_steps" --distill-focus "$focus" \
        --eval-every 100000 --eval-batches 1 --checkpoint-every 30 \
        ${phase2_flags[@]+"${phase2_flags[@]}"}
    evaluate "focus$focus-every2-800" "$run/checkpoint" --batches "$eval_batches" \
        --plans every:2 --passkey "$passkeys" --passkey-filler 30
    evaluate "focus$focus-every2-2000" "$run/checkpoint" --batches 1 --plans every:2 \
        --passkey "$passkeys" --passkey-filler 80
    evaluate "focus$focus-others" "$run/checkpoint" --batches "$eval_batches" \
        --plans full,every:3,every:4
done

python3 - "$runs/evals" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*/eval.json")):
    for model in json.loads(path.read_text()):
        for plan in model["plans"]:
            passkey = plan.get("passkey")
            if passkey:
                passkey = (f", passkey {passkey['accuracy']:.0%} of {passkey['prompts']}"
                           f" (~{passkey['mean_prompt_tokens']:.0f} tokens)")
            else:
                passkey = ""
            print(f"{path.parent.name}: {plan['plan']} perplexity {plan['perplexity']:.3f}{passkey}")
EOF
