"""Support machinery for the core scripts: checkpoints, runtime, data formats, FLOPs, memory, metrics,
the fused CPU kernels and the peer objectives. Imported by model.py, train.py, data.py and eval.py; it never
imports an entry point (train.py, eval.py, data.py)."""
