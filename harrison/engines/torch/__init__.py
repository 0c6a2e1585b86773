"""The torch engine: Caffe's nets, solvers and weight files executed on PyTorch (see engine.py)."""
