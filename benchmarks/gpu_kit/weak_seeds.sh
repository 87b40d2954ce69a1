#!/usr/bin/env bash
# One call on the lent GPU machine (issue 15): the weak baseline's settings, two seeds each, side by side.
# Run from the repository root on the device machine, with .gpu/ laid out by benchmarks/gpu_kit/make_kit.py and
# carried (device tool: command "BUDGET=390 bash benchmarks/gpu_kit/weak_seeds.sh", carry [".gpu"]); BUDGET is
# the seconds the trainings may take before they are stopped and what they logged is summarised into $OUT.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
CFG=configs/msrc21/weak_expand_constrain.yaml
COMMON="--set data.root=.gpu/msrc21 --set weak.tags=$PWD/.gpu/msrc21_train.tags.txt --set train.threads=2"
declare -A V=( [A]="" [B]="--set weak.gwrp_decay=0.993" [C]="--set weak.prior.iterations=10" [D]="--set weak.gwrp_decay=0.998" )
mkdir -p /tmp/r
for k in A B C D; do for s in 0 1; do
  python3 -m structseg train $CFG $COMMON ${V[$k]} --set train.seed=$s --out /tmp/r/$k$s > /tmp/r/$k$s.log 2>&1 &
done; done
end=$((SECONDS + ${BUDGET:-400}))
while [ $SECONDS -lt $end ] && [ -n "$(jobs -r)" ]; do sleep 5; done
jobs -r > /tmp/r/still_running.txt; kill $(jobs -p) 2>/dev/null; sleep 2
for k in A B C D; do for s in 0 1; do
  echo "== $k$s ${V[$k]} seed $s"; tail -c 600 /tmp/r/$k$s.log | tr '\r' '\n' | tail -4
  cat /tmp/r/$k$s/metrics.jsonl 2>/dev/null | python3 -c "
import sys, json
for l in sys.stdin:
    r = json.loads(l)
    v = r.get('val') or {}
    print(r['epoch'], round(r['train_loss'], 4), round(r['images_per_s'], 1), 'img/s', round(r['epoch_time_s'], 1), 's',
          'val', {k: round(x, 4) for k, x in v.items() if isinstance(x, float)})"
done; done 2>&1 | tee $OUT/summary.txt
tar czf $OUT/metrics.tgz -C /tmp/r $(cd /tmp/r && ls -d */metrics.jsonl */config.yaml *.log 2>/dev/null)
for k in A B C D; do [ -f /tmp/r/${k}0/best.pt ] && python3 -m structseg export /tmp/r/${k}0/best.pt $OUT/${k}0_best_fp16.pt > /dev/null; done
ls -la $OUT
