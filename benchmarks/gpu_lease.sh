#!/usr/bin/env bash
# Issue 23's checks in one command on one H100/H200 (the device tool's machine: torch 2.11, no
# librosa/soundfile/soxr/jsonschema/papermill; carry .whl from ../shared/tools/h200-wheels.sh).
# Run once on 2026-12-04 (figures in benchmarks/README.md, "GPU: one lease"); caps since then
# favour gpu_grid's two batched-by-shape stages (members masked vs regrouped at every end).
# Steps, each under its own time cap and the whole under LIMIT seconds (default 560):
#   1. benchmarks/gpu_grid.py: matmul peak; per-fold vs batched (by shape, compiled, by run)
#   2. `serlib grid` on benchmarks/profiles/tables.yaml: the paper's Tables grid through the
#      product (generated IEMOCAP-sized corpus, features, batched groups on CUDA by default),
#      every output line time-stamped
#   3. the CUDA tests of serlib.batched (tests/test_cuda.py -k batched)
#   4. if time is left: the same grid per fold (--no-batched), same features
# Output under $OUT (at most 8 files): lease.log is everything; gpu_grid.{json,md};
# tables_batched.log, tables_per_fold.log; tables_summaries.json; cuda_tests.log.
# DRY=1 checks the script on a CPU: gpu_grid --dry-run and a tiny grid on the smoke corpus.
# MODE=book instead: the paper book (`serlib book`, book/profiles/paper.yaml, 3 seeds) on the
# generated IEMOCAP-sized corpus, under LIMIT: the issue's "<= 10 minutes" target, unmeasured
# so far (one lease's command is at most 10 minutes: run it as a lease of its own).
set -u
OUT=${OUT:-/tmp/gpu_lease_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/lease.log") 2>&1
start=$(date +%s)
limit=${LIMIT:-560}
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/serlib-inductor
if [ -d .whl ] && ! python3 -c "import librosa, papermill" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || echo "wheel install failed"
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

left() { echo $(( limit - ($(date +%s) - start) )); }
# step CAP NAME COMMAND...: run COMMAND under min(CAP, time left), time-stamping its lines
step() {
  local cap=$1 name=$2; shift 2
  local t; t=$(left); (( t > cap )) && t=$cap
  if (( t < 30 )); then echo "=== $name: skipped, $(left) s left"; return; fi
  echo "=== $name: start at +$(( $(date +%s) - start )) s, cap $t s: $*"
  local t0; t0=$(date +%s)
  timeout "$t" "$@" 2>&1 | python3 -u -c '
import sys, time
t0 = time.time()
for line in sys.stdin:
    for part in line.rstrip("\n").split("\r"):
        if part.strip():
            print(f"{time.time() - t0:7.1f}s {part}", flush=True)'
  echo "=== $name: rc ${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ "${MODE:-grid}" = book ]; then
  # the paper profile (book/profiles/paper.yaml: Tables 1-4, the strong recipe, the studies,
  # baselines, fusion, 3 seeds) on the generated IEMOCAP-sized corpus instead of a real copy;
  # DRY=1: the tiny profile. Every chapter runs through papermill; the HTML step then stops
  # where Jupyter Book is missing (the GPU image): the chapters' time is the figure.
  source=book/profiles/paper.yaml; [ "${DRY:-0}" = 1 ] && source=book/profiles/tiny.yaml
  python3 - "$source" /tmp/paper_generated.yaml <<'PY'
import sys
import yaml
profile = yaml.safe_load(open(sys.argv[1]))
profile.update(name=f"{profile['name']}-generated", requires_data_root=False,
               corpus={"size": "iemocap" if profile["name"] == "paper" else "small"})
yaml.safe_dump(profile, open(sys.argv[2], "w"), sort_keys=False)
PY
  step $(( limit - 10 )) paper_book python3 -m serlib book --profile /tmp/paper_generated.yaml \
    --out /tmp/paper_book | tee "$OUT/paper_book.log"
  find /tmp/paper_book/runs -name summary.json 2>/dev/null | wc -l | sed 's/^/run folders done: /'
  echo "=== done at +$(( $(date +%s) - start )) s"
  exit 0
fi

if [ "${DRY:-0}" = 1 ]; then
  grid_profile=book/profiles/tiny.yaml; dry=(--dry-run); grid_extra=(--batched --jobs 1)
else
  grid_profile=benchmarks/profiles/tables.yaml; dry=(); grid_extra=()
fi

step 360 gpu_grid python3 benchmarks/gpu_grid.py --per-fold-runs 1 --per-fold-folds 2 \
  --budget 230 --out "$OUT/gpu_grid" "${dry[@]}"

step 190 tables_batched python3 -m serlib grid --profile "$grid_profile" --out /tmp/tables \
  "${grid_extra[@]}" | tee "$OUT/tables_batched.log"

step 100 cuda_tests python3 -m pytest -m gpu tests/test_cuda.py -k batched -q -x \
  -p no:cacheprovider | tee "$OUT/cuda_tests.log"

# the same grid per fold, on the same selection and features (copied; runs not)
if [ -f /tmp/tables/selection.csv ]; then
  mkdir -p /tmp/tables_per_fold
  cp -r /tmp/tables/selection.csv /tmp/tables/cache /tmp/tables/data /tmp/tables_per_fold/ \
    2>/dev/null
  extra=("${grid_extra[@]/--batched/--no-batched}")
  [ "${DRY:-0}" = 1 ] || extra=(--no-batched)
  step 400 tables_per_fold python3 -m serlib grid --profile "$grid_profile" \
    --out /tmp/tables_per_fold "${extra[@]}" | tee "$OUT/tables_per_fold.log"
fi

python3 - "$OUT/tables_summaries.json" <<'PY'
import json, sys
from pathlib import Path
out = {}
for root in ("/tmp/tables", "/tmp/tables_per_fold"):
    for summary in sorted(Path(root, "runs").glob("*/summary.json")):
        s = json.loads(summary.read_text())
        out[f"{Path(root).name}/{summary.parent.name}"] = {
            k: s.get(k) for k in ("wa_mean", "wa_std", "ua_mean", "ua_std", "wall_seconds",
                                  "device", "n_folds")}
Path(sys.argv[1]).write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out, indent=1))
PY
echo "=== done at +$(( $(date +%s) - start )) s"
