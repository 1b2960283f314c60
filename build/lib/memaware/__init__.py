"""memaware: Memory Aware Synapses and continual-learning baselines in PyTorch."""

__version__ = "0.1.0"
