#!/usr/bin/env bash
# The runs behind the example report in docs/report.md: 5 model types x 2 sizes x 3 seeds on
# digits, 20 epochs each (about 3 minutes on 2 CPU cores), plus one run that diverges.
#   bash docs/digits_demo.sh && python -m jaxcollective.report --results=runs/digits_demo.jsonl
set -e
R=${1:-runs/digits_demo.jsonl}
rm -f "$R"  # the report shows these runs only
# --resume=never: never continue an older, stopped run of the same config
COMMON="--dataset=digits --epochs=20 --results=$R --progress=false --resume=never"
# the debug preset's architecture, without its training keys (the original's CONFIG_DEBUG
# also sets 4 accumulation steps, augmentation and bf16): the runs docs/report.md shows
DEBUG="--config=debug --gradient_accumulation_steps=1 --use_augmentation=false --use_mixed_precision=false"
for seed in 0 1 2; do
  python run.py --model_type=collective $DEBUG $COMMON --seed=$seed > /dev/null
  python run.py --model_type=collective $COMMON --seed=$seed > /dev/null
  for mt in shallow balanced deep deep_resnet; do
    python run.py --model_type=$mt $DEBUG $COMMON --seed=$seed > /dev/null
    python run.py --model_type=$mt $COMMON --seed=$seed > /dev/null
  done
done
python run.py --model_type=shallow --dataset=digits --epochs=5 --optimizer=sgd --learning_rate=1e30 --results=$R --progress=false --resume=never > /dev/null 2>&1 || true
