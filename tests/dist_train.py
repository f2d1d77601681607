"""Run by test_train.py under `torchrun --nproc_per_node 2`: a few steps on two CPU processes.

Arguments: BASE DATA RUN BATCH [STAGE INIT] (stage 2 runs without identity: no ArcFace here).
"""

import sys
from pathlib import Path

from mgfr_cli.training.data import PromptConfig
from mgfr_cli.training.train import train
from mgfr_cli.training.train_config import load_train_config

base, data, run, batch = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
stage = int(sys.argv[5]) if len(sys.argv) > 5 else 1
init = Path(sys.argv[6]) if len(sys.argv) > 6 else None
cfg = load_train_config(None, dict(stage=stage, model="mgfr-tiny", batch_size=batch, max_steps=3, checkpoint_every=3,
                                   num_workers=0, lr_warmup_steps=1, learning_rate=1e-3, use_identity=False,
                                   prompts=PromptConfig(0.3, 0.1, 0.2)))
train(cfg, base_path=base, data_dir=data, run_dir=run, init=init)
