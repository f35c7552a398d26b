"""Complete tiny model directories (released-format checkpoint + tokenizer) for tests and benchmarks.

A model directory is what users point ``model.path`` at: ``config.json`` + weights + ``tokenizer.model``.
The tiny one has random weights, so its answers are arbitrary but deterministic; protocol tests
(node, CLI, cache) need exactly that. Behaviour tests use the embedded trained model instead.
"""

from __future__ import annotations

from pathlib import Path

import torch

from groma_ros.model.tokenization_groma import GromaTokenizer, train_sentencepiece
from groma_ros.testing.checkpoints import make_random_checkpoint, tiny_config

TINY_VOCAB = 320  # SentencePiece with byte fallback needs > 259 pieces

_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.",
    "USER: Here is an image with region crops from it. Image: . Regions: . ASSISTANT: Thank you for the "
    "image! How can I assist you with it?",
    "Locate the red mug in the image. Locate all the cups in this image. Where is the red circle?",
    "Describe the image briefly. What is this? What colour is it? How many circles are there? yes no",
    "pick up the blue square, grab the small green star, find the large yellow triangle, point to it",
]


def make_tiny_model_dir(directory: str | Path, seed: int = 0, endless: bool = False) -> Path:
    """Write a tiny random Groma (released format) + a small SentencePiece tokenizer into ``directory``.

    ``endless=True`` zeroes the ``</s>`` row of ``lm_head`` so greedy decoding practically never stops
    before ``max_new_tokens``: tests of cancel, BUSY and queues need queries that take a while.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_config()
    llm_cfg = config.llm_cfg.to_dict() if hasattr(config.llm_cfg, "to_dict") else dict(config.llm_cfg)
    llm_cfg["vocab_size"] = TINY_VOCAB
    config = tiny_config(llm_cfg=llm_cfg)
    make_random_checkpoint(directory, config, seed=seed)
    if endless:
        weights = directory / "pytorch_model.bin"
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state["llm.lm_head.weight"][2].zero_()
        torch.save(state, weights)
    model_file = train_sentencepiece(_CORPUS * 20, TINY_VOCAB, directory / "tokenizer.model")
    GromaTokenizer.from_model_file(model_file).save_pretrained(directory)
    return directory
