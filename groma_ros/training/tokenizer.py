"""Stage 0: a small LLaMA-style SentencePiece tokenizer for the synthetic world, plus Groma's 114 tokens.

Why train one: a 32k Vicuna vocabulary would dwarf a 2 M-parameter LLM. The corpus is every synthetic
query/answer text plus every prompt-template text the engine can send (repeated so their words become
single pieces and the fixed prompt stays short).
"""

from __future__ import annotations

import re
from pathlib import Path

from groma_ros.engine import prompts
from groma_ros.model.tokenization_groma import GromaTokenizer, train_sentencepiece
from groma_ros.synthetic.texts import corpus_texts

TEMPLATE_REPEAT = 400
_TAG = re.compile(r"<[^<>]*>|\[grounding\]")


def template_texts() -> list[str]:
    """Every fixed text of the prompt format (system prompt, first turn, all task templates)."""
    texts = [prompts.PREFIX.replace("</s>", " "), prompts.suffix_for("x")]
    for group in (prompts.REFER_TEMPLATES, prompts.MULTI_TEMPLATES, prompts.CAPTION_INSTRUCTIONS,
                  prompts.REGION_BRIEF_TEMPLATES, prompts.REGION_DETAIL_TEMPLATES):
        texts.extend(t.replace("{}", "it") for t in group)
    # Tag tokens are added tokens, never SentencePiece text: keep their characters out of the BPE merges
    # (a learned ">." piece would swallow the "." that follows "<image>" in the prompt).
    return [" ".join(_TAG.sub(" ", t).split()) for t in texts]


def train_tokenizer(out_dir: str | Path, vocab_size: int = 800, corpus_scenes: int = 3000) -> GromaTokenizer:
    """Train, save (``tokenizer.model`` + json files) and return the tokenizer; legacy=False like Vicuna."""
    out_dir = Path(out_dir)
    texts = corpus_texts(corpus_scenes, "train", keep_markup=False) + template_texts() * TEMPLATE_REPEAT
    model_path = train_sentencepiece(texts, vocab_size, out_dir / "sp" / "tokenizer.model")
    tok = GromaTokenizer.from_model_file(model_path, legacy=False)
    tok.save_pretrained(out_dir / "tokenizer")
    return GromaTokenizer.from_pretrained(out_dir / "tokenizer")
