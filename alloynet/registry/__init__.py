"""The model store (versions, verified artifacts, champion pointer, rollback) and the promotion rule."""

from alloynet.registry.promotion import Decision, PromotionRule, best_candidate, decide, tail_classes
from alloynet.registry.store import (
    ArtifactIntegrityError,
    ChampionPointer,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    open_registry,
)

__all__ = [
    "ArtifactIntegrityError",
    "ChampionPointer",
    "Decision",
    "ModelRegistry",
    "ModelVersion",
    "PromotionRule",
    "RegistryError",
    "best_candidate",
    "decide",
    "open_registry",
    "tail_classes",
]
