"""Builders and runners that compile and time candidate kernels, locally or on Ray."""
