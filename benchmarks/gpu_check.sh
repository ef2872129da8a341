#!/usr/bin/env bash
# The default task chain (train + evaluate every task, the pipeline's default config) outside Snakemake, on whatever
# device is there (a GPU if torch sees one), in several DeepSpeed settings and through each launcher:
#
#   benchmarks/gpu_check.sh RESULTS_DIR OUT_DIR
#
# RESULTS_DIR: a pipeline run's results/<run> with tokens/, tokenizer/, split/ and synonyms/ made (e.g. by
# `snakemake tokens results/default/split/tasks.json results/default/synonyms/synonyms.json`), so the chain reads the
# same tokens as the pipeline. OUT_DIR gets one folder per setting (models, memories, evaluate JSON) and
# summary.json: per setting, the accuracy matrix, final average accuracy, device and seconds per task.
# TOKENFORGE="python3 -m tokenforge.cli" (default) when tokenforge is not installed but on PYTHONPATH.
set -euo pipefail
R=${1:?results dir}; OUT=${2:?out dir}
TF=${TOKENFORGE:-python3 -m tokenforge.cli}
PY=${PYTHON:-python3}
TASKS=$($PY -c "import json,sys; print(len(json.load(open(sys.argv[1]))['tasks']))" "$R/split/tasks.json")
mkdir -p "$OUT"
# config/config.yaml's train and memory defaults, as the train rule passes them
TRAIN=(--input tokens --epochs 30 --batch-size 64 --lr 0.001 --weight-decay 0.05 --warmup-epochs 1.0 --embed-dim 64
       --depth 4 --num-heads 4 --mlp-ratio 2.0 --input-dropout 1.0 --deepspeed-config config/deepspeed.json
       --synonyms "$R/synonyms/synonyms.json" --seed 0 --threads 2 -q)

chain() {  # name, launcher (words), tasks, extra train flags...
  local name=$1 launch=$2 upto=$3; shift 3
  local dir="$OUT/$name" t
  mkdir -p "$dir"
  for ((t = 0; t < upto; t++)); do
    local prev=()
    ((t > 0)) && prev=(--previous "$dir/task-$((t - 1))")
    SECONDS=0
    $launch train --tokens "$R/tokens/train.parquet" --tokenizer "$R/tokenizer" --split "$R/split" --task "$t" \
      "${prev[@]}" --out "$dir/task-$t" "${TRAIN[@]}" "$@" > "$dir/train-$t.log" 2>&1 || { tail -30 "$dir/train-$t.log"; exit 1; }
    $TF evaluate --model "$dir/task-$t" --tokens "$R/tokens/test.parquet" --split "$R/split" --task "$t" \
      --out "$dir/evaluate-$t.json" -q > "$dir/evaluate-$t.log" 2>&1 || { tail -30 "$dir/evaluate-$t.log"; exit 1; }
    echo "$name task $t: $(tail -1 "$dir/evaluate-$t.log") (train + evaluate ${SECONDS} s)"
  done
}

chain fp32 "$TF" "$TASKS"
chain bf16-zero2-accum2-actckpt "$TF" "$TASKS" --precision bf16 --zero-stage 2 --gradient-accumulation 2 --activation-checkpointing
chain torchrun "torchrun --standalone --nproc_per_node=1 -m tokenforge.cli" 2
chain deepspeed-launcher "deepspeed --no_local_rank --num_gpus 1 --master_port $($PY -m tokenforge.engine.launch --free-port) --module tokenforge.cli" 2

$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {}
for d in sorted(p for p in out.iterdir() if p.is_dir()):
    rows = [json.loads(f.read_text()) for f in sorted(d.glob("evaluate-*.json"), key=lambda f: int(f.stem.split("-")[1]))]
    stats = [json.loads(f.read_text()) for f in sorted(d.glob("task-*/stats.json"), key=lambda f: int(f.parent.name.split("-")[1]))]
    summary[d.name] = {"accuracy_matrix": [r["accuracy"] for r in rows], "final_average_accuracy": rows[-1]["average_accuracy"],
                       "device": stats[0]["device"], "world_size": stats[0]["world_size"], "deepspeed": stats[0]["deepspeed"],
                       "train_wall_s": [s["wall_s"] for s in stats], "peak_gpu_memory_mb": [s["peak_gpu_memory_mb"] for s in stats],
                       "memory_bytes": [s["memory_bytes"] for s in stats]}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
for name, s in summary.items():
    print(f"{name}: final average accuracy {s['final_average_accuracy']:.3f} on {s['device']} (world {s['world_size']})")
EOF
