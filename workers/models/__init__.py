"""Models: what to load (``spec``), where its files come from (``sources``:
bundled, GGUF, local, hub), loading it frozen (``loading``), its tokenizer and
prompt formatting (``codec``), its decoder blocks (``layers``), and seeded
tiny random models for tests (``tiny``).

May import: ``workers.jobs``, torch, transformers. Nothing else of the project.
"""

from workers.models.codec import Codec, LoadedModel
from workers.models.layers import LayerResolutionError, normalize_layer, resolve_layers
from workers.models.loading import load_codec, load_model, peek_shape
from workers.models.spec import ModelLoadError, ModelShape, ModelSpec

__all__ = [
    "Codec",
    "LayerResolutionError",
    "LoadedModel",
    "ModelLoadError",
    "ModelShape",
    "ModelSpec",
    "load_codec",
    "load_model",
    "normalize_layer",
    "peek_shape",
    "resolve_layers",
]
