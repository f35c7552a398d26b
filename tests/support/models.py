"""Complete tiny model directories (released-format checkpoint + tokenizer) for tests and benchmarks.

A model directory is what users point ``model.path`` at: ``config.json`` + weights + ``tokenizer.model``.
The tiny one has random weights, so its answers are arbitrary but deterministic; protocol tests
(node, CLI, cache) need exactly that. Behaviour tests use the embedded trained model instead.
"""

from __future__ import annotations

from pathlib import Path

import torch

from groma_ros.engine import prompts
from groma_ros.model.tokenization_groma import GromaTokenizer, train_sentencepiece
from tests.support.checkpoints import make_random_checkpoint, tiny_config

TINY_VOCAB = 320  # SentencePiece with byte fallback needs > 259 pieces

_CORPUS = [
    prompts.PREFIX,
    "USER: Locate the red mug in the image. ASSISTANT:",
    "Locate all the cups in this image. Give me a concise description of the image.",
    "Please briefly describe the region. What is this? What colour is it? How many circles are there? yes no",
    "a red circle above a blue square next to a large green triangle on the table",
    "pick up the small yellow triangle left of the white mug, grab a spoon and a fork 0123456789",
] * 4


def make_tiny_model_dir(directory: str | Path, seed: int = 0, endless: bool = False,
                        llm_intermediate_size: int | None = None) -> Path:
    """Write a tiny random Groma (released format) + a small SentencePiece tokenizer into ``directory``.

    ``endless=True`` zeroes the ``</s>`` row of ``lm_head`` so greedy decoding practically never stops
    before ``max_new_tokens``: tests of cancel, BUSY and queues need queries that take a while.
    ``llm_intermediate_size`` widens the LLM's MLP: memory tests need weights that outweigh the process's
    other memory (40_000 gives about 125 MB of fp32 weights).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_config()
    llm_cfg = config.llm_cfg.to_dict() if hasattr(config.llm_cfg, "to_dict") else dict(config.llm_cfg)
    llm_cfg["vocab_size"] = TINY_VOCAB
    if llm_intermediate_size is not None:
        llm_cfg["intermediate_size"] = int(llm_intermediate_size)
    config = tiny_config(llm_cfg=llm_cfg)
    make_random_checkpoint(directory, config, seed=seed)
    if endless:
        weights = directory / "pytorch_model.bin"
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state["llm.lm_head.weight"][2].zero_()
        torch.save(state, weights)
    model_file = train_sentencepiece(_CORPUS, TINY_VOCAB, directory / "sp" / "tokenizer.model")
    GromaTokenizer.from_model_file(model_file, legacy=False).save_pretrained(directory)  # as Vicuna v1.5
    return directory
