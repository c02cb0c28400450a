#!/usr/bin/env bash
# The speed figures of docs/performance.md's tables, in one go (needs only jax, flax
# and optax; no data, no network). On a GPU machine:
#   bash docs/gpu_bench.sh [OUT_DIR]          # writes OUT_DIR/bench.jsonl, prints it
# Each bench line is a JSON object of `python -m jaxcollective.bench`; the last line
# is the wall time of one whole run.py trial (interpreter start, compile with an empty
# cache, EPOCHS epochs of training + validation + test), Fashion-MNIST-sized synthetic data.
# Then the population scaling (docs/design.md, "Population trials"): K phase1 collective
# trials as the members of one program, for K in POPULATIONS, each timed over a full
# epoch; the last line turns that into trials per hour and the wall time of the seed's
# whole phase1 sweep (PHASE1_EPOCHS epochs in all: ~280 trials, ~8,400 epochs).
# CONFIG, EPOCHS, STEPS, BENCH_EPOCHS, SEEDS, POPULATIONS, PHASE1_EPOCHS and EXTRA (more
# keys for every line) override the defaults (for a quick check).
# The phase1 preset is the original's whole CONFIG_PHASE1 (batch 128 with 4 accumulation
# steps, weight decay 1e-4, augmentation on); the timings override its training keys to
# batch 256, no accumulation, no weight decay (TIMING below), and set augmentation per line.
set -euo pipefail
OUT=${1:-runs/bench}
CONFIG=${CONFIG:-phase1}
EPOCHS=${EPOCHS:-200}
STEPS=${STEPS:-200}
BENCH_EPOCHS=${BENCH_EPOCHS:-3}
SEEDS=${SEEDS:-8}
POPULATIONS=${POPULATIONS:-1 8 32 128 256}
PHASE1_EPOCHS=${PHASE1_EPOCHS:-8400}
SHAPE=${SHAPE:-fashion_mnist}   # the synthetic data's shape (digits: a quick check of the script)
TIMING="--batch_size=256 --gradient_accumulation_steps=1 --weight_decay=0 ${EXTRA:-}"
mkdir -p "$OUT"
J="$OUT/bench.jsonl"
: > "$J"
# the bench lines, one process for all (one interpreter start and device set-up): one
# JSON object per line
bench() {
  python -m jaxcollective.bench --config="$CONFIG" --dataset="$SHAPE" $TIMING --lines=- "$@" >> "$J"
}
bench --steps="$STEPS" --epochs="$BENCH_EPOCHS" <<LINES
--model_type=collective --use_augmentation=true
--model_type=collective --use_augmentation=true --num_seeds=$SEEDS
--model_type=collective --use_augmentation=true --dtype=bfloat16
--model_type=collective --use_augmentation=true --matmul_precision=highest
--model_type=shallow --use_augmentation=false
--model_type=deep_resnet --use_augmentation=false
LINES

python - "$J" "$OUT" "$CONFIG" "$EPOCHS" "$SHAPE" $TIMING <<'EOF'
import json, os, subprocess, sys, time
out_file, out_dir, config, epochs, shape, *timing = sys.argv[1:]
cmd = [sys.executable, "run.py", "--model_type=collective", f"--config={config}", *timing,
       "--dataset=synthetic", f"--synthetic_like={shape}", "--use_augmentation=true",
       f"--epochs={epochs}", "--progress=false", f"--results={out_dir}/trial.jsonl"]
env = dict(os.environ, JAXCOLLECTIVE_CACHE_DIR="", WANDB_MODE="disabled")
t = time.perf_counter()
subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
wall = time.perf_counter() - t
rec = json.loads(open(f"{out_dir}/trial.jsonl").read().splitlines()[-1])
row = {"trial": " ".join(cmd[1:]), "epochs": rec["epochs_completed"], "status": rec["status"],
       "trial_wall_s": round(wall, 2), "final/test_accuracy": rec["final/test_accuracy"]}
with open(out_file, "a") as f:
    f.write(json.dumps(row) + "\n")
EOF
# population scaling: a member is a replica of the vmapped program (as --num_seeds); the
# largest K that fits is the last line that succeeds (the bench skips a K out of device
# memory); each timed over one whole epoch (--steps=0: no separate timing of updates)
for K in $POPULATIONS; do echo "--num_seeds=$K"; done |
  bench --steps=0 --epochs=1 --model_type=collective --use_augmentation=true
python - "$J" "$PHASE1_EPOCHS" <<'EOF'
import json, sys
path, phase1_epochs = sys.argv[1], int(sys.argv[2])
rows = [json.loads(line) for line in open(path)]
pops = [r for r in rows[7:] if "epoch_s" in r]
scaling = [{"population": r["num_seeds"], "epoch_s": r["epoch_s"],
            "member_epochs_per_hour": round(3600 * r["num_seeds"] / r["epoch_s"]),
            "phase1_sweep_min": round(phase1_epochs / r["num_seeds"] * r["epoch_s"] / 60, 1)}
           for r in pops]
with open(path, "a") as f:
    f.write(json.dumps({"population_scaling": scaling, "phase1_epochs": phase1_epochs}) + "\n")
EOF
cat "$J"
