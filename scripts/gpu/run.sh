#!/usr/bin/env bash
# The GPU kit: one command for an offline H100/H200 machine, run from the repository root with the folder
# that scripts/gpu/fetch.sh filled (.gpu-wheels) carried along. Inside a deadline it enforces itself
# (KIT_BUDGET_S, 510 s: under 9 minutes with the kill grace), it
#   1. installs the carried wheels with pip --no-index, and the project with --no-deps;
#   2. compiles causal-conv1d and mamba-ssm for sm_90 in the background (scripts/build_mamba_ssm_gpu.sh,
#      every core, at the lowest CPU priority) while the next steps run;
#   3. validates every model's every available backend on CUDA (python -m bench validate, one process
#      per model, all at once), while a warm-up run lets fla autotune its Triton kernels for the sweep's
#      shapes;
#   4. runs the CUDA sweep scripts/gpu/sweep.toml in two passes, 1K and 4K with the accuracy smoke test,
#      then 16K, into one report (the deadline cuts the 16K pass if it must); validates Mamba and Mamba2
#      again with their mamba_ssm kernels once the build has finished, and sweeps them if time is left
#      (scripts/gpu/sweep-mamba-ssm.toml); if the build does not finish, SUMMARY.md says "not built (time)";
#   5. packs the reports, SUMMARY.md and the logs into OUTDIR/gpu-reports.tar.gz (re-packed after each
#      step, so an interrupted run still leaves one).
# Only the archive and kit.log are written to OUTDIR (a device call returns at most 8 files); the
# working folders live under KIT_WORK. kit.log says when each step started, its limit and how long it
# took. Exit status: 0 if every step ended well (the Mamba build running out of time included), 1 if a
# step failed or ran out of time, 2 on bad usage, 3 if there is no CUDA device.
#
# usage: scripts/gpu/run.sh [--dry-run] OUTDIR
#   --dry-run  every step on the CPU at toy sizes, the build replaced by a stub that sleeps
#              (KIT_STUB_BUILD_S, 5 s); nothing is installed: the carried wheels, if present, are
#              resolved into a throwaway target instead (scripts/gpu/kit_tools.py check-wheels).
# Environment: KIT_BUDGET_S (510), KIT_WHEELS (.gpu-wheels), KIT_WORK (build/gpu-kit), KIT_JOBS
# (processes at once in step 3; default: the number of cores), KIT_COMMIT (recorded in SUMMARY.md),
# PYTHON (python3).
set -euo pipefail

usage() { echo "usage: $0 [--dry-run] OUTDIR" >&2; exit 2; }
DRY=0
if [[ ${1:-} == --dry-run ]]; then
    DRY=1
    shift
fi
[[ $# == 1 && $1 != -* ]] || usage

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KIT=$ROOT/scripts/gpu
cd "$ROOT"
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
START=$(date +%s)
BUDGET_S=${KIT_BUDGET_S:-510}
DEADLINE=$((START + BUDGET_S))
RESERVE_S=15  # kept back for the summary and the archive
WHEELS=${KIT_WHEELS:-$ROOT/.gpu-wheels}
WORK=${KIT_WORK:-$ROOT/build/gpu-kit}
JOBS=${KIT_JOBS:-$(nproc)}
PYTHON=${PYTHON:-python3}
RUN=$WORK/gpu-reports  # what the archive holds; rebuilt on every run
LOGS=$RUN/logs
LOG=$OUTDIR/kit.log

rm -rf "$RUN"
mkdir -p "$LOGS" "$WORK"
rm -rf "$WORK/build.done" "$WORK/build.pid" "$WORK/validate-parts" "$WORK/warmup-fla"
rm -f "$LOG" "$OUTDIR/gpu-reports.tar.gz"
: > "$RUN/steps.tsv"
: > "$WORK/pids"
# the source tree comes first on sys.path, whether or not the editable install below works
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export TRITON_CACHE_DIR=$WORK/triton-cache  # kept between runs on the same machine

now() { date +%s; }
left() { echo $((DEADLINE - RESERVE_S - $(now))); }
log() { printf '%s +%4ss  %s\n' "$(date -u +%H:%M:%S)" "$(($(now) - START))" "$*" | tee -a "$LOG" >&2; }
info() { echo "$*" >> "$RUN/kit-info.txt"; }

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {  # on any exit: stop what this script started and is still running (by pid, timeout's only)
    local pid
    while read -r pid; do
        if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == timeout ]]; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done < "$WORK/pids"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# step NAME MAX_S COMMAND...: run COMMAND under `timeout` (its whole process group is killed at the
# limit) for at most MAX_S seconds (`all`: all that is left), output to logs/NAME.log; log its start, its
# limit, how long it took and how it ended; a line in steps.tsv. Returns the command's status.
step() {
    local name=$1 max=$2 limit rc=0 began
    shift 2
    limit=$(left)
    if [[ $max != all ]] && ((max < limit)); then limit=$max; fi
    if ((limit < 5)); then
        log "SKIP  $name: no time left"
        printf '%s\tskipped (no time)\t0\t0\n' "$name" >> "$RUN/steps.tsv"
        return 124
    fi
    log "START $name (limit ${limit}s): $*"
    began=$(now)
    timeout -k 5 "$limit" "$@" >> "$LOGS/$name.log" 2>&1 &
    echo $! >> "$WORK/pids"
    wait $! || rc=$?
    local took=$(($(now) - began)) status=ok
    if ((rc == 124 || rc == 137)); then
        status="timeout"
    elif ((rc != 0)); then
        status="exit $rc"
    fi
    log "END   $name: $status after ${took}s"
    if [[ $status != ok ]]; then
        tail -n 12 "$LOGS/$name.log" | sed 's/^/        | /' | tee -a "$LOG" >&2
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "$limit" >> "$RUN/steps.tsv"
    return "$rc"
}

pack() {  # the archive, rebuilt from what is there now
    cp "$LOG" "$RUN/kit.log"
    "$PYTHON" "$KIT/kit_tools.py" summary "$RUN" > /dev/null 2>&1 || log "warning: SUMMARY.md failed"
    tar -czf "$OUTDIR/gpu-reports.tar.gz.tmp" -C "$WORK" gpu-reports
    mv "$OUTDIR/gpu-reports.tar.gz.tmp" "$OUTDIR/gpu-reports.tar.gz"
}

# ---------------------------------------------------------------------------------------------------
FAILED=0
if [[ $DRY == 1 ]]; then
    info "mode: dry run on the CPU (toy sizes; the build is a stub)"
else
    info "mode: GPU run"
fi
info "started: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), budget ${BUDGET_S}s, $(nproc) cores"
info "commit: ${KIT_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
log "GPU kit$([[ $DRY == 1 ]] && echo ' (dry run)'): budget ${BUDGET_S}s, work in $WORK, wheels from $WHEELS"

# --- 0. what machine this is ---
{
    echo "== python, torch"
    "$PYTHON" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
    if [[ $DRY == 0 ]]; then
        echo "== nvidia-smi"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
        echo "== nvcc"
        "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version | tail -n 2 || true
    fi
    echo "== image packages (scripts/gpu/image.txt)"
    "$PYTHON" "$KIT/kit_tools.py" image-versions
    echo "== cores, memory"
    nproc
    free -g | head -n 2 || true
} > "$LOGS/machine.log" 2>&1 || true
"$PYTHON" -m pip list --format=freeze > "$LOGS/pip-list.txt" 2>&1 || true
if [[ $DRY == 0 ]]; then
    GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
    if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        log "error: torch sees no CUDA device (see logs/machine.log); use --dry-run on a CPU machine"
        pack
        exit 3
    fi
    info "machine: ${GPU:-unknown GPU}"
else
    info "machine: $(uname -n) (CPU)"
fi
log "machine: $(grep -m1 '^torch' "$LOGS/machine.log" || true)"

# --- 1. install ---
if [[ $DRY == 1 ]]; then
    if [[ -d $WHEELS ]]; then
        # nothing installed: pip resolves requirements.txt into a throwaway target, for Python 3.12 on
        # manylinux, from the carried wheels and stand-ins for the image's packages
        step install 120 "$PYTHON" "$KIT/kit_tools.py" check-wheels "$WHEELS" || FAILED=1
    else
        log "no wheel folder $WHEELS: resolution not checked (scripts/gpu/fetch.sh fills it)"
        info "carried wheels: not checked (no $WHEELS)"
    fi
else
    [[ -d $WHEELS ]] || { log "error: no wheel folder $WHEELS: run scripts/gpu/fetch.sh and carry it"; FAILED=1; }
    PIP=("$PYTHON" -m pip install --isolated --no-index --no-cache-dir --find-links "$WHEELS")
    if ! step install 120 "${PIP[@]}" -r "$KIT/requirements.txt"; then
        # e.g. a read-only environment: the carried wheels into a folder of their own, without resolving
        log "install into the environment failed: installing the carried wheels into $WORK/site instead"
        rm -rf "$WORK/site"
        if step install-target 120 "${PIP[@]}" --no-deps --target "$WORK/site" "$WHEELS"/*.whl; then
            export PYTHONPATH="$PYTHONPATH:$WORK/site"
        else
            FAILED=1
        fi
    fi
    step install-project 30 "${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT" \
        || log "the editable install failed: the harness runs from the source tree (PYTHONPATH) instead"
    step import-check 60 "$PYTHON" -c 'import pydantic, fla, fla.layers, bench.cli
print("pydantic", pydantic.VERSION, "fla", fla.__version__)' || FAILED=1
    info "install: $(grep -h -m1 '^pydantic' "$LOGS/import-check.log" 2>/dev/null || echo 'see logs/install.log')"
fi
pack

# --- 2. the Mamba kernels, compiled in the background ---
if [[ $DRY == 1 ]]; then
    BUILD=(sleep "${KIT_STUB_BUILD_S:-5}")
else
    BUILD=(nice -n 19 env MAX_JOBS="$(nproc)" BUILD_DIR="$WORK/gpu-src" PYTHON="$PYTHON"
           bash "$ROOT/scripts/build_mamba_ssm_gpu.sh" "$WHEELS")
fi
BUILD_LIMIT=$(left)
log "START build in the background (limit ${BUILD_LIMIT}s): ${BUILD[*]}"
(
    began=$(now) rc=0
    timeout -k 5 "$BUILD_LIMIT" "${BUILD[@]}" > "$LOGS/build.log" 2>&1 &
    echo $! >> "$WORK/pids"
    echo $! > "$WORK/build.pid"
    wait $! || rc=$?
    echo "$rc $(($(now) - began)) $(now)" > "$WORK/build.done"
) &
BUILD_WRAPPER=$!
build_running() { [[ ! -f $WORK/build.done ]]; }

# --- 3. validation of every backend, one process per model, with fla's warm-up beside it ---
if [[ $DRY == 1 ]]; then
    VALIDATE=(--device cpu --seq-len 24)
    "$PYTHON" "$KIT/kit_tools.py" toy-spec "$KIT/sweep.toml" "$WORK/sweep-toy.toml" \
        d_model=32 n_layers=1 max_seconds=1 val_samples=16 eval_samples=32
    SWEEP_SPEC=$WORK/sweep-toy.toml
    TOY=(--device cpu --d-model 32 --n-layers 1 --vocab-size 256 --repeats 2 --warmup 1 --timeout 120)
    WARM_LENS=64
    export OMP_NUM_THREADS=1  # several processes share two cores
else
    VALIDATE=(--device cuda)
    SWEEP_SPEC=$KIT/sweep.toml
    TOY=()
    WARM_LENS=1024
fi
mapfile -t MODELS < <("$PYTHON" -m bench list 2>> "$LOGS/machine.log" | awk '{print $1}')
if ((${#MODELS[@]} == 0)); then
    log "error: python -m bench list named no model (see logs/machine.log)"
    FAILED=1
fi
log "models: ${MODELS[*]}"
GROUP_END=$(($(now) + 150))  # every process of this step ends by then
PIDS=()
wait_for_slot() {
    local alive pid
    while :; do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done
        ((alive < JOBS)) && return
        sleep 1
    done
}
# fla autotunes its Triton kernels on first use of a shape; a short run of the sweep's fla models caches
# the choices (on disk, TRITON_CACHE_DIR) for the sweep. Its timings are discarded.
# TOY less what the warm-up sets itself: a flag given twice with two values is refused
WARM_TOY=()
for ((i = 0; i < ${#TOY[@]}; i += 2)); do
    case ${TOY[i]} in --repeats | --warmup | --timeout) ;; *) WARM_TOY+=("${TOY[i]}" "${TOY[i + 1]}") ;; esac
done
step warmup-fla $((GROUP_END - $(now))) "$PYTHON" -m bench run "$SWEEP_SPEC" "${WARM_TOY[@]}" \
    --models deltanet,gated-deltanet --modes train,prefill,decode --seq-lens "$WARM_LENS" --repeats 1 \
    --warmup 1 --timeout 150 --no-progress --no-report --out "$WORK/warmup-fla" &
PIDS+=($!)
for model in "${MODELS[@]}"; do
    wait_for_slot
    step "validate-$model" $((GROUP_END - $(now))) "$PYTHON" -m bench validate "${VALIDATE[@]}" \
        --models "$model" --out "$WORK/validate-parts/$model" &
    PIDS+=($!)
done
for pid in "${PIDS[@]}"; do wait "$pid" || FAILED=1; done
rm -rf "$WORK/warmup-fla"
PARTS=()
for model in "${MODELS[@]}"; do PARTS+=("$WORK/validate-parts/$model"); done
"$PYTHON" "$KIT/kit_tools.py" merge-validate "$RUN/validate" "${PARTS[@]}" >> "$LOG" 2>&1 || FAILED=1
rm -rf "$WORK/validate-parts"
pack

# --- the Mamba kernels' status, and their checks once they are built ---
BUILD_STATUS="" MAMBA_VALIDATED=0
build_settle() {  # once the build has ended: its status, logged once
    [[ -z $BUILD_STATUS && -f $WORK/build.done ]] || return 0
    local rc took ended
    read -r rc took ended < "$WORK/build.done"
    if ((rc == 0)); then
        BUILD_STATUS="built in ${took}s"
    elif ((rc == 124 || rc == 137 || rc == 143)); then
        BUILD_STATUS="not built (time): stopped after ${took}s"
    else
        BUILD_STATUS="build failed (exit $rc after ${took}s): see logs/build.log"
        FAILED=1
    fi
    [[ $DRY == 0 ]] || BUILD_STATUS="$BUILD_STATUS (dry run: a stub that sleeps)"
    echo "$ended" > "$RUN/build-ended"
    log "Mamba CUDA kernels (mamba_ssm, causal-conv1d): $BUILD_STATUS"
    info "Mamba CUDA kernels (mamba_ssm, causal-conv1d): $BUILD_STATUS"
    printf 'build (background)\t%s\t%s\t%s\n' "$BUILD_STATUS" "$took" "$BUILD_LIMIT" >> "$RUN/steps.tsv"
}
build_ok() { build_settle; [[ $BUILD_STATUS == built* ]]; }
validate_mamba() {  # Mamba and Mamba2 on every backend again, their mamba_ssm kernels now among them
    MAMBA_VALIDATED=1
    step validate-mamba-ssm 90 "$PYTHON" -m bench validate "${VALIDATE[@]}" --models mamba,mamba2 \
        --out "$RUN/validate-mamba-ssm" || FAILED=1
    pack
}

# --- 4. the sweep: scripts/gpu/sweep.toml in two passes, 1K and 4K (with the accuracy smoke test) for
# every model, then 16K, so that a sweep cut short by the deadline loses only 16K cells, of the models
# listed last. Both passes' results go into one results.jsonl and one report.
if [[ $DRY == 1 ]]; then SHORT=32 LONG=64; else SHORT=1024,4096 LONG=16384; fi
SWEEP=$RUN/sweep
rm -rf "$SWEEP" "$WORK/sweep-long"
# 90 s kept back: at least a minute for 16K, and the report
step sweep $(($(left) - 90)) "$PYTHON" -m bench run "$SWEEP_SPEC" "${TOY[@]}" --seq-lens "$SHORT" \
    --no-progress --no-report --out "$SWEEP" || FAILED=1
pack
# the Mamba kernels' correctness before more timings, if they are ready
if build_ok; then validate_mamba; fi
step sweep-16k $(($(left) - 30)) "$PYTHON" -m bench run "$SWEEP_SPEC" "${TOY[@]}" --seq-lens "$LONG" \
    --modes train,prefill,decode --no-progress --no-report --out "$WORK/sweep-long" || FAILED=1
if [[ -s $WORK/sweep-long/results.jsonl ]]; then
    mkdir -p "$SWEEP"
    cat "$WORK/sweep-long/results.jsonl" >> "$SWEEP/results.jsonl"
    cp "$WORK/sweep-long/manifest.json" "$SWEEP/manifest-16k.json"
    # a first pass that left nothing: the second's manifest makes the folder a run `bench report` writes into
    [[ -e $SWEEP/manifest.json ]] || cp "$WORK/sweep-long/manifest.json" "$SWEEP/manifest.json"
    cp "$WORK/sweep-long/spec.json" "$SWEEP/spec-16k.json"
fi
if [[ -s $SWEEP/results.jsonl ]]; then
    step sweep-report 60 "$PYTHON" -m bench report "$SWEEP" || FAILED=1
fi
pack

# --- 2 again: the Mamba kernels, if they are built in time ---
POST_NEED=$([[ $DRY == 1 ]] && echo 20 || echo 60)  # seconds a validation of Mamba and Mamba2 needs
if build_running && (($(left) > POST_NEED)); then
    log "waiting for the Mamba build (until ${POST_NEED}s before the end)"
    while build_running && (($(left) > POST_NEED)); do sleep 2; done
fi
if build_running; then
    log "stopping the Mamba build: no time left to use it"
    BUILD_PID=$(cat "$WORK/build.pid" 2>/dev/null || true)
    if [[ -n $BUILD_PID && $(cat "/proc/$BUILD_PID/comm" 2>/dev/null) == timeout ]]; then
        kill -TERM "$BUILD_PID" 2>/dev/null || true  # timeout passes it on to the whole build
    fi
fi
wait "$BUILD_WRAPPER" 2>/dev/null || true
[[ -f $WORK/build.done ]] || echo "124 0 $(now)" > "$WORK/build.done"
if build_ok; then
    ((MAMBA_VALIDATED == 1)) || validate_mamba
    if (($(left) > 60)); then
        MAMBA_FLAGS=()
        # on the CPU there is no mamba_ssm: the same step with the models' default backend
        if [[ $DRY == 1 ]]; then MAMBA_FLAGS=("${TOY[@]}" --seq-lens "$SHORT" --models "mamba2,mamba"); fi
        rm -rf "$RUN/sweep-mamba-ssm"
        step sweep-mamba-ssm $(($(left) - 30)) "$PYTHON" -m bench run "$KIT/sweep-mamba-ssm.toml" \
            "${MAMBA_FLAGS[@]}" --no-progress --no-report --out "$RUN/sweep-mamba-ssm" || FAILED=1
        if [[ -s $RUN/sweep-mamba-ssm/results.jsonl ]]; then
            step sweep-mamba-ssm-report 60 "$PYTHON" -m bench report "$RUN/sweep-mamba-ssm" || FAILED=1
        fi
    else
        log "no time left for sweep-mamba-ssm"
        info "sweep of the Mamba kernels: not run (no time left)"
    fi
fi

# --- 5. pack ---
log "done in $(($(now) - START))s$([[ $FAILED == 0 ]] || echo ', with failures (see above)')"
pack
"$PYTHON" "$KIT/kit_tools.py" summary "$RUN" || true
echo "archive: $OUTDIR/gpu-reports.tar.gz ($(du -k "$OUTDIR/gpu-reports.tar.gz" | cut -f1) KiB)"
exit "$FAILED"
