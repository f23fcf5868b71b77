"""Model presets (e2b, e4b, tiny) and Hugging Face checkpoints (random or given).

Importing this package is cheap: torch/transformers load only when a config or model
is built.
"""

from edgekit.models.presets import PRESETS, Preset, get_preset, list_presets

__all__ = ["PRESETS", "Preset", "get_preset", "list_presets"]
