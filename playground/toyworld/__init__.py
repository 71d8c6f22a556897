"""Procedurally generated visual world in which small objects need a closer look."""

from .scene import COLORS, PATTERNS, SHAPES, Scene, Target, make_scene
from .world import (
    GROUNDING_PROMPT,
    MISSING_OBJECTS_PREFIX,
    SEG_CLASSES,
    SHORT_ANSWER_SUFFIX,
    Question,
    WorldSize,
    color_question,
    generate,
    missing_objects_answer,
    pattern_question,
    roi_params,
)

__all__ = [
    "COLORS",
    "PATTERNS", "GROUNDING_PROMPT", "MISSING_OBJECTS_PREFIX", "SEG_CLASSES", "SHAPES", "SHORT_ANSWER_SUFFIX", "Question", "Scene",
    "Target", "WorldSize", "color_question", "generate", "make_scene", "missing_objects_answer", "roi_params",
    "pattern_question",
]  # fmt: skip
