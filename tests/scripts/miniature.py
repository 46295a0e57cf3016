"""The tiny preset shrunk to seconds, for smoke tests of the scripts that train and score."""

import json
from pathlib import Path

from protocol.hparams import load_hparams


def miniature_hparams(path: Path) -> Path:
    """The tiny preset shrunk to seconds: a 1-layer model, 2 inner steps of 4 short sequences."""
    data = load_hparams("tiny").model_dump(mode="json")
    data["model"].update(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                         num_kv_heads=2, max_seq_len=32)
    data["training"].update(inner_steps=2, batch_size=4, seq_len=32, warmup_steps=2)
    data["scoring"].update(eval_batches=1)
    path.write_text(json.dumps(data))
    return path
