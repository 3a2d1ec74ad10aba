"""Tools that use the core but are not it: the main job (compare), the benchmark, export, the GPU check and
the nanoGPT comparison. Each runs from the repository root as `python tools/NAME.py`."""
