#!/usr/bin/env bash
# The speed figures of README's performance table, in one go (needs only jax, flax
# and optax; no data, no network). On a GPU machine:
#   bash docs/gpu_bench.sh [OUT_DIR]          # writes OUT_DIR/bench.jsonl, prints it
# Each bench line is the JSON object of `python -m jaxcollective.bench`; the last line
# is the wall time of one whole run.py trial (interpreter start, compile with an empty
# cache, EPOCHS epochs of training + validation + test), Fashion-MNIST-sized synthetic data.
# CONFIG, EPOCHS, STEPS, BENCH_EPOCHS, SEEDS and EXTRA (more keys for every line) override
# the defaults (for a quick check).
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
SHAPE=${SHAPE:-fashion_mnist}   # the synthetic data's shape (digits: a quick check of the script)
TIMING="--batch_size=256 --gradient_accumulation_steps=1 --weight_decay=0 ${EXTRA:-}"
mkdir -p "$OUT"
J="$OUT/bench.jsonl"
: > "$J"
bench() {
  python -m jaxcollective.bench --config="$CONFIG" --dataset="$SHAPE" $TIMING --steps="$STEPS" --epochs="$BENCH_EPOCHS" "$@" | tail -n 1 >> "$J"
}
bench --model_type=collective --use_augmentation=true
bench --model_type=collective --use_augmentation=true --num_seeds="$SEEDS"
bench --model_type=collective --use_augmentation=true --dtype=bfloat16
JAX_DEFAULT_MATMUL_PRECISION=highest bench --model_type=collective --use_augmentation=true
bench --model_type=shallow --use_augmentation=false
bench --model_type=deep_resnet --use_augmentation=false

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
cat "$J"
