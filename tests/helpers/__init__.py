"""Shared test helpers; ROOT is the repository root, wherever a test file sits under tests/."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
