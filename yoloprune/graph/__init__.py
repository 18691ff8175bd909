"""Dependency graph of a YOLO model: split-free rewrites, tracing, attention handling, coupled groups, heads."""
