"""Training machinery. Choice lists of the DeepSpeed options are named once, below (torch-free, for the CLI).

- `train`: one task's training job for every family: the family's job (families/) through the loop, the memory,
  the ranks' agreement, the outputs;
- `job`: the interface of a family's training job and what the families' jobs share (task manifest, ranks, callbacks);
- `loop`: the training loop as the method reads (current batch, replayed memory batch, one step);
- `callbacks`: what runs around it without changing it: progress bar, MLflow metrics, checkpoints;
- `deepspeed`: the DeepSpeed engine and its config (ZeRO, precision, accumulation);
- `speed`: the speed options of a step (compile, AdamW implementation, lean DeepSpeed step, CPU heap cache);
- `checkpoint`: resumable checkpoints outside the job's outputs;
- `launch`: how a training job starts (one process, torchrun, the deepspeed launcher, srun);
- `pretrain`: the optional pretrain stage (supervised on disjoint data, masked-token modelling, timm weights);
- `evaluate`: the accuracy of a trained model on every task's test set.
"""

# train.zero_stage: 0 off, 1 optimizer states, 2 also gradients (3 is not offered: memory building and the
# subset path need whole parameters)
ZERO_STAGES = (0, 1, 2)
# train.precision
PRECISIONS = ("fp32", "bf16")
# train.compile: torch.compile of the model (engine/speed.py); reduce-overhead adds CUDA graphs on a GPU
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
# train.adamw: torch's AdamW implementation; auto = fused on a GPU, for-loop on a CPU (engine/speed.py)
ADAMW_IMPLEMENTATIONS = ("auto", "for-loop", "foreach", "fused")
# pretrain.mode: none, or how the start of task 0 is made (engine/pretrain.py)
PRETRAIN_MODES = ("none", "supervised", "mtm", "timm")
