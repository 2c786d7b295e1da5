#!/usr/bin/env bash
# The GPU check of issue 14, for a machine with an NVIDIA GPU and its own torch but no package index.
#
#   bench/gpu_check.sh [WHEELS_DIR]      # from the repository root; WHEELS_DIR defaults to .whl
#
# 1. installs super-gradients and the trainer's other missing runtime packages from the carried wheels
#    (bench/gpu_wheels.py lists them and prints the pip download command) into /tmp/site;
# 2. runs bench/gpu_check.py: the super-gradients baseline (sg_trainer_baseline.py) and the project's training
#    command side by side (same synthetic data, batch 32, 640 px), then the trainer command end to end (2 epochs
#    with AMP and channels_last, SIGKILL after epoch 1, resume, evaluate, ONNX export checked in onnxruntime);
# 3. writes $OUT/gpu_figures.json (after every step, so a step that runs out of time still leaves the others).
#
# Everything is budgeted to end within 8 minutes (GPU_CHECK_BUDGET_S, default 470 s for the python part).
# The baseline script lives outside the repository (../shared/bench); copy it into an ignored, carried folder
# (e.g. .bench/sg_trainer_baseline.py) or point BASELINE_SCRIPT at it.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-.whl}
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
started=$(date +%s)
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl >"$OUT/pip_install.log" 2>&1 || { tail -20 "$OUT/pip_install.log"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/include${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no wheels in $WHEELS: using the interpreter's own packages" >&2
  export PYTHONPATH=$PWD/include${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
installed=$(( $(date +%s) - started ))
echo "wheels installed in ${installed}s"
budget=${GPU_CHECK_BUDGET_S:-$(( 470 - installed ))}
# The driver budgets each step itself; this is the backstop (SIGTERM, then SIGKILL 10 s later).
timeout -k 10 $(( budget + 5 )) python3 bench/gpu_check.py --out "$OUT" --budget "$budget" \
  --install-seconds "$installed" "${@:2}"
status=$?
echo "gpu_check.py exited $status; figures in $OUT/gpu_figures.json"
exit $status
