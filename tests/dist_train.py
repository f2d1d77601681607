"""Run by test_train.py under `torchrun --nproc_per_node 2`: a few stage-1 steps on two CPU processes."""

import sys
from pathlib import Path

from mgfr_cli.data import PromptConfig
from mgfr_cli.train import train
from mgfr_cli.train_config import load_train_config

base, data, run, batch = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
cfg = load_train_config(None, dict(stage=1, model="mgfr-tiny", batch_size=batch, max_steps=3, checkpoint_every=3,
                                   num_workers=0, lr_warmup_steps=1, learning_rate=1e-3,
                                   prompts=PromptConfig(0.3, 0.1, 0.2)))
train(cfg, base_path=base, data_dir=data, run_dir=run)
