"""Shared numerics and device helpers: the layer below models, data, methods, train and eval."""
