"""Sampling helpers that do not ship with a saved pipeline.

    images   tensors <-> PIL images and uint8, image grids, atomic PNG writes
    seeded   image i drawn from its own generator seeded seed + i
"""
