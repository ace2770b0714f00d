"""Benchmarks of the encode/decode hot path, the train step, the machine's peak, PyTorch
side by side and time to quality. Run each as `python -m benchmarks.<name> [--smoke]`.
"""
