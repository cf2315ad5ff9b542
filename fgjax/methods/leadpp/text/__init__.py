"""Class-description text prototypes for LEAD++: CLIP's BPE tokenizer, reading the
original's prototype tensors, building new ones with the CLIP text tower.

  load_prototypes(path) -> float32 [C, D]; build_prototypes(csv, weights, vocab) -> [C, D]
  fgjax text build|inspect ...
"""

from fgjax.methods.leadpp.text.prototypes import (
    build_prototypes,
    embed_texts,
    load_prototypes,
    prototype_stats,
    read_descriptions,
)
from fgjax.methods.leadpp.text.tokenizer import (
    CONTEXT_LENGTH,
    BPETokenizer,
    clean_text,
    split_words,
)

__all__ = [
    "CONTEXT_LENGTH",
    "BPETokenizer",
    "build_prototypes",
    "clean_text",
    "embed_texts",
    "load_prototypes",
    "prototype_stats",
    "read_descriptions",
    "split_words",
]
