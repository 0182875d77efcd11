#!/usr/bin/env bash
# The stability experiment (docs/precision.md, "Stability experiment"; issue 11): for each config,
# six training runs {fp32, bf16 with an fp32 router, bf16 with a bf16 router} x {z-loss on (the
# config's w_zloss, or --zloss W), z-loss off (w_zloss 0)}, same seed and data, into one folder,
# then bench/stability_summary.py: a markdown table (final val loss, max router logit at the end
# and its peak, routing change) and gnuplot PNGs (loss, max router logit, routing change vs step,
# one line per run).
#
# The bf16 runs need `moe train --precision/--router-precision`; a binary whose `moe train --help`
# lacks them runs the fp32 pair only and the summary lists the others as skipped, saying why.
# A run that fails (e.g. diverges: "training loss is nan") is kept, with its log, as a result.
#
#   bench/stability_experiment.sh [--config FILE]... [--steps N] [--out DIR] [--threads N]
#       [--eval-every N] [--log-every N] [--zloss W] [--only RUN[,RUN...]] [--moe BIN]
#   defaults: configs/shakespeare-char-moe.json and configs/stability-larger.json, 300 steps,
#   runs/stability, 2 threads, eval every max(steps/12, 1) steps, log every 5, all six runs.
#   RUN names: fp32-zloss fp32-nozloss bf16-zloss bf16-nozloss bf16router-zloss bf16router-nozloss
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
MOE=build/moe
CONFIGS=()
STEPS=300
OUT=runs/stability
THREADS=2
EVAL_EVERY=""
LOG_EVERY=5
ZLOSS=""
ONLY=""
die() { echo "stability_experiment: $*" >&2; exit 2; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1: needs a value"; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ]; }
while [ $# -gt 0 ]; do
  case $1 in
    --config) need_value "$@"; CONFIGS+=("$2"); shift 2 ;;
    --steps) need_value "$@"; is_uint "$2" || die "--steps $2: expected an integer >= 1"; STEPS=$2; shift 2 ;;
    --out) need_value "$@"; OUT=$2; shift 2 ;;
    --threads) need_value "$@"; is_uint "$2" || die "--threads $2: expected an integer >= 1"; THREADS=$2; shift 2 ;;
    --eval-every) need_value "$@"; is_uint "$2" || die "--eval-every $2: expected an integer >= 1"; EVAL_EVERY=$2; shift 2 ;;
    --log-every) need_value "$@"; is_uint "$2" || die "--log-every $2: expected an integer >= 1"; LOG_EVERY=$2; shift 2 ;;
    --zloss) need_value "$@"; [[ $2 =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || die "--zloss $2: expected a number > 0"; ZLOSS=$2; shift 2 ;;
    --only) need_value "$@"; ONLY=$2; shift 2 ;;
    --moe) need_value "$@"; MOE=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=(configs/shakespeare-char-moe.json configs/stability-larger.json)
[ -n "$EVAL_EVERY" ] || EVAL_EVERY=$(( STEPS / 12 > 0 ? STEPS / 12 : 1 ))
[ -x "$MOE" ] || die "no $MOE (build it: cmake --build build --target moe), or give --moe BIN"
for c in "${CONFIGS[@]}"; do [ -f "$c" ] || die "--config $c: no such file"; done

ALL_RUNS=(fp32-zloss fp32-nozloss bf16-zloss bf16-nozloss bf16router-zloss bf16router-nozloss)
if [ -n "$ONLY" ]; then
  IFS=, read -r -a want <<< "$ONLY"
  for r in "${want[@]}"; do
    [[ " ${ALL_RUNS[*]} " == *" $r "* ]] || die "--only $r: not a run (${ALL_RUNS[*]})"
  done
else
  want=("${ALL_RUNS[@]}")
fi

# Does this binary know the precision keys? (config keys are listed in `moe train --help`)
HELP=$("$MOE" train --help 2>&1 || true)
has_key() { grep -Eq "(^|[[:space:]])(--)?$1([[:space:]=,]|$)" <<< "$HELP"; }
HAVE_PREC=0
if has_key precision && has_key 'router[-_]precision'; then HAVE_PREC=1; fi

mkdir -p "$OUT"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
for cfg in "${CONFIGS[@]}"; do
  name=$(basename "$cfg" .json)
  zon=$ZLOSS
  if [ -z "$zon" ]; then
    zon=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("w_zloss", 0))' "$cfg")
  fi
  "$PY" -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "$zon" ||
    die "$cfg: w_zloss is $zon, so z-loss on and off would be the same run; give --zloss W"
  mkdir -p "$OUT/$name"
  cp "$cfg" "$OUT/$name/config.json"
  for run in "${want[@]}"; do
    dir="$OUT/$name/$run"
    case $run in
      fp32-*) prec=fp32; rprec=fp32 ;;
      bf16-*) prec=bf16; rprec=fp32 ;;
      bf16router-*) prec=bf16; rprec=bf16 ;;
    esac
    case $run in *-nozloss) w=0 ;; *) w=$zon ;; esac
    rm -rf "$dir"
    mkdir -p "$dir"
    flags=(--config "$cfg" --out "$dir" --max-steps "$STEPS" --eval-every "$EVAL_EVERY"
           --log-every "$LOG_EVERY" --save-every "$STEPS" --threads "$THREADS" --w-zloss "$w"
           --quiet --json)
    if [ "$HAVE_PREC" = 1 ]; then
      flags+=(--precision "$prec" --router-precision "$rprec")
    elif [ "$prec" != fp32 ]; then
      # Kept as a record: the summary says which runs were skipped and why.
      printf '{"run":"%s","precision":"%s","router_precision":"%s","w_zloss":%s,"status":"skipped","why":"%s train --help has no --precision/--router-precision (the bf16 training of issue 11 is not in this binary)"}\n' \
        "$run" "$prec" "$rprec" "$w" "$MOE" > "$dir/run.json"
      echo "stability: $name/$run skipped: $MOE train --help lacks --precision" >&2
      continue
    fi
    echo "stability: $name/$run (precision $prec, router $rprec, w_zloss $w, $STEPS steps)..." >&2
    t0=$(date +%s.%N)
    set +e
    "$MOE" train "${flags[@]}" > "$dir/train.out" 2> "$dir/train.log"
    rc=$?
    set -e
    t1=$(date +%s.%N)
    status=ok
    [ $rc = 0 ] || status=failed
    why=$(tail -n 1 "$dir/train.log" 2>/dev/null | tr -d '"\\' | cut -c1-400)
    [ $rc = 0 ] && why=""
    printf '{"run":"%s","precision":"%s","router_precision":"%s","w_zloss":%s,"status":"%s","exit":%d,"why":"%s","wall_s":%s,"explicit_precision_flags":%s,"commit":"%s","threads":%d}\n' \
      "$run" "$prec" "$rprec" "$w" "$status" "$rc" "$why" \
      "$("$PY" -c "print(round($t1 - $t0, 1))")" "$([ $HAVE_PREC = 1 ] && echo true || echo false)" \
      "$commit" "$THREADS" > "$dir/run.json"
    [ $rc = 0 ] || echo "stability: $name/$run failed (exit $rc): $why" >&2
  done
done
"$PY" bench/stability_summary.py "$OUT"
