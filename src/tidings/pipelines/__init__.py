"""Pipelines: declarative graphs of stages (chained steps in one consumer) wired by topics."""

from tidings.pipelines.graph import GraphError, Item, Pipeline, Stage, Step

__all__ = ["GraphError", "Item", "Pipeline", "Stage", "Step"]
