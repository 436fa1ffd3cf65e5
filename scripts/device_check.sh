#!/usr/bin/env bash
# The GPU half of calibration (issue 9) as one prepared command for a lent GPU machine (the `device` tool),
# and the half that follows it here. Nothing here changes the card's settings (clocks, power, MIG).
#
#   bash scripts/device_check.sh --fetch-wheels   # here, once: wheels the device image lacks (simpy,
#                                                 # pydantic and its deps, for its Python 3.12) into .whl/
#   bash scripts/device_check.sh                  # there: run(command=..., carry=[".whl"], timeout_s=560)
#   bash scripts/device_check.sh --finish DIR     # here: DIR = the fetched $OUT (holding results.tgz)
#
# On the GPU it runs, each step under its own time limit (525 s in all at most), going on after a failed step:
#   1. the card's ceilings as found: a device-to-device copy and a bf16 GEMM, CUDA-event timed (ceilings.json);
#   2. the backend profiler for $MODEL (layer_times.csv, copy_bandwidth.csv, microbatch.csv);
#   3. the fixed-batch experiments of $SCENARIO through the backend (iterations.csv, timeline.json);
#   4. the backend's GPU tests (tests/test_backend_gpu.py; their output is in the log).
# and packs 1-3 into $OUT/results.tgz after every step (the device tool brings back at most 8 files, and
# what finished comes back if the call is cut off), with device_check.log.
# --finish unpacks them under calibration/data/<gpu>/ (profiler CSVs in <model>/, the run in runs/<scenario>/),
# fits calibration/profiles/<gpu>.yaml on the profiler's CSVs and verifies the run against the simulator with
# that profile (runs/<scenario>/verify/: verify.csv, verify.html, verify_summary.json).
#
# Knobs (environment): MODEL (llama-2-7b), SCENARIO (scenarios/verify_llama2_7b.yaml), DEVICE (auto), GPU (the
# preset name; default from the card's name), QUICK=1 (the profiler's smoke grid), SKIP_TESTS=1, PYTHON
# (python3), OUT (where results go; the device tool sets it), DATA_ROOT (calibration/data), PROFILE_DIR
# (calibration/profiles) and VIDUR (../shared/data/measurements/vidur) for --finish. A CPU dry run of the
# whole chain, as tests/test_device_check.py runs it:
#   DEVICE=cpu GPU=h200 QUICK=1 SKIP_TESTS=1 MODEL=scenarios/backend_smoke_model.json \
#     SCENARIO=scenarios/backend_smoke.yaml OUT=/tmp/dc bash scripts/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODEL=${MODEL:-llama-2-7b}
SCENARIO=${SCENARIO:-scenarios/verify_llama2_7b.yaml}
DEVICE=${DEVICE:-auto}
RUN_NAME=$(basename "$SCENARIO" .yaml)
MODEL_NAME=$(basename "$MODEL" .json)

gpu_slug() {  # the card's name -> the simulator's GPU preset (the reader's mapping), "cpu" without one
  $PY - "$DEVICE" <<'EOF'
import sys
import torch
from backend.timing import resolve_device
from calibration.measurements import gpu_from_name
dev = resolve_device(sys.argv[1])
name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
print(gpu_from_name(name) or name.lower().replace("nvidia", "").strip().replace(" ", "-"))
EOF
}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  rm -rf .whl && mkdir -p .whl
  $PY -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl "simpy>=4.1" "pydantic>=2.5"
  ls .whl
  exit $?
fi

if [[ "${1:-}" == "--finish" ]]; then
  src=${2:?"--finish DIR: DIR is the fetched \$OUT holding results.tgz"}
  [[ -f "$src/results.tgz" ]] || { echo "error: $src/results.tgz: no such file" >&2; exit 2; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  tar xzf "$src/results.tgz" -C "$tmp" || exit 2
  gpu=${GPU:-$(cat "$tmp/gpu")}
  data=${DATA_ROOT:-calibration/data}/$gpu
  mkdir -p "$data/runs"
  cp -r "$tmp/data/." "$data/"
  cp -r "$tmp/run/." "$data/runs/"
  [[ -f "$tmp/ceilings.json" ]] && cp "$tmp/ceilings.json" "$data/"
  [[ -f "$src/device_check.log" ]] && cp "$src/device_check.log" "$data/"
  prof=${PROFILE_DIR:-calibration/profiles}/$gpu.yaml
  # A GPU the public Vidur files also time (h100-sxm, a100-80g) is fitted on both, so its committed profile
  # keeps what it learnt from them; any other GPU on the backend's CSVs alone.
  vidur=${VIDUR:-../shared/data/measurements/vidur}
  extra=()
  if compgen -G "$vidur/${gpu%%-*}_*linear_ops.csv" >/dev/null; then extra=("$vidur"); fi
  set -e
  $PY -m calibration.fit "$data" "${extra[@]}" --gpu "$gpu" --out "$prof"
  $PY -m calibration.verify "$data/runs/$RUN_NAME" "$SCENARIO" --gpu "$gpu" --profile "$prof"
  echo "committed-to-be: $data, $prof"
  exit 0
fi

OUT=${OUT:-/tmp/device_check_out}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"
log="$OUT/device_check.log"
: >"$log"
status=()

step() {  # step NAME LIMIT_S CMD...: run with a time limit, log it, go on after a failure
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit} s): $*" | tee -a "$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  status+=("$name rc=$rc $((SECONDS - t0))s")
  echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$log"
  # pack after every step: if the device call is cut off, what finished still comes back
  tar czf "$OUT/results.tgz.part" -C "$work" . 2>>"$log" && mv "$OUT/results.tgz.part" "$OUT/results.tgz"
}

if [[ -d .whl ]]; then
  step wheels 60 $PY -m pip install --no-index --find-links .whl "simpy>=4.1" "pydantic>=2.5"
fi
gpu=${GPU:-$(gpu_slug)}
echo "$gpu" >"$work/gpu"
{ echo "gpu preset: $gpu"; nvidia-smi 2>&1 | head -20; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } >>"$log" 2>&1

step ceilings 45 $PY - "$DEVICE" "$work/ceilings.json" <<'EOF'
# The two numbers METHOD.md asks for first: copy bandwidth and the bf16 matrix rate, as the card is found.
import json, sys
import torch
from backend.timing import provenance, resolve_device, summarize, time_calls
dev = resolve_device(sys.argv[1])
cuda = dev.type == "cuda"
n_copy, n_mm = (1 << 30, 8192) if cuda else (1 << 24, 512)  # 1 GiB (20x the L2) / 8192^3 on a GPU
dtype = torch.bfloat16 if cuda else torch.float32
src = torch.randn(n_copy // 2, device=dev, dtype=torch.bfloat16)
dst = torch.empty_like(src)
t_copy = summarize(time_calls(lambda: dst.copy_(src), dev, repeats=10, warmup=3))[0]
a = torch.randn(n_mm, n_mm, device=dev, dtype=dtype)
b = torch.randn(n_mm, n_mm, device=dev, dtype=dtype)
t_mm = summarize(time_calls(lambda: a @ b, dev, repeats=10, warmup=3))[0]
res = {**provenance(dev, dtype, "scripts/device_check.sh (ceilings)"),
       "d2d_copy_bytes": 2 * n_copy, "d2d_copy_s": t_copy, "d2d_gb_per_s": 2 * n_copy / t_copy / 1e9,
       "gemm_mnk": n_mm, "gemm_s": t_mm, "gemm_tflop_per_s": 2 * n_mm ** 3 / t_mm / 1e12,
       "note": "median of 10 after 3 warm-ups; copy bytes count read + write; random inputs"}
json.dump(res, open(sys.argv[2], "w"), indent=2)
print(json.dumps(res))
EOF

quick=(); [[ "${QUICK:-0}" == 1 ]] && quick=(--quick)
step profile 150 $PY -m backend.profile --model "$MODEL" --out "$work/data/$MODEL_NAME" --device "$DEVICE" "${quick[@]}"
step backend-run 150 $PY -m backend.run "$SCENARIO" --out "$work/run/$RUN_NAME" --device "$DEVICE"
if [[ "${SKIP_TESTS:-0}" != 1 ]]; then  # last: the measurements are what the lease is for
  step gpu-tests 120 $PY -m pytest -q -m gpu tests/test_backend_gpu.py -p no:cacheprovider
fi

echo "== summary ($gpu)" | tee -a "$log"
printf '%s\n' "${status[@]}" | tee -a "$log"
[[ -f "$work/ceilings.json" ]] && { cat "$work/ceilings.json"; echo; }
tar tzf "$OUT/results.tgz" | grep -E 'csv|json' | tee -a "$log"
