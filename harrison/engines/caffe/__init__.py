"""Real BVLC Caffe 1.0: discovery and the bubblewrap command (root.py), the engine (engine.py) and the
helper process that runs under Caffe's own Python (worker.py)."""
