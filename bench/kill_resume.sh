#!/bin/bash
# Claim: an experiment cell killed with `kill -9` mid-training continues from its last
# finished epoch when the same command is run again, and ends with exactly the result of a
# run that was never interrupted.  Run from the project root: bash bench/kill_resume.sh
set -euo pipefail
work=$(mktemp -d)
cmd=(python -m recbole_genair.experiments --dataset=ml-100k --models=GRU4Rec --methods=genair --seeds=1
     --torch_threads=1 --show_progress=False --epochs=3 --stopping_step=10)
"${cmd[@]}" --out="$work/whole" > "$work/whole.log" 2>&1
"${cmd[@]}" --out="$work/cut" > "$work/cut1.log" 2>&1 &
pid=$!
until ls "$work"/cut/saved/progress/*.pth > /dev/null 2>&1; do sleep 1; done
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
python - "$work" <<'PY'
import glob, sys, torch
state = torch.load(glob.glob(f"{sys.argv[1]}/cut/saved/progress/*.pth")[0], weights_only=False)
print(f"killed (-9) with epoch {state['epoch']} saved, training finished: {state['finished']}")
PY
"${cmd[@]}" --out="$work/cut" > "$work/cut2.log" 2>&1
grep -h "resuming from" "$work/cut2.log"
python - "$work" <<'PY'
import json, os, sys
work = sys.argv[1]
last = lambda d: [json.loads(line) for line in open(f"{work}/{d}/results.jsonl")][-1]
a, b = last("whole"), last("cut")
for name, r in (("uninterrupted", a), ("killed + resumed", b)):
    print(f"{name}: valid NDCG@10 per epoch {r['valid_curve']}, test HR@10 {r['test_result']['hit@10']}, "
          f"NDCG@10 {r['test_result']['ndcg@10']}")
print("identical test results:", a["test_result"] == b["test_result"],
      "| identical valid curve:", a["valid_curve"] == b["valid_curve"],
      "| progress files left:", os.listdir(f"{work}/cut/saved/progress"))
PY
rm -rf "$work"
