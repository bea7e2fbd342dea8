"""Data sets: simulation into a store, the manifest and its splits, the torch Dataset and transforms."""

from alloynet.physics.alloys import ALLOY_NAMES

CLASS_NAMES: tuple[str, ...] = ALLOY_NAMES

__all__ = ["CLASS_NAMES"]
