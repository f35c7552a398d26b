"""Training recipe of the embedded tiny Groma: stage 0 tokenizer, stage 1 perception, stage 2 LLM.

Modules: ``recipe`` (sizes and hyper-parameters), ``tokenizer`` (stage 0), ``data`` (scenes -> tensors and
token sequences in the engine's exact prompt format), ``forward`` (differentiable forwards with the
intermediates the losses need), ``matching`` (Hungarian matching + box losses), ``stage1`` / ``stage2``
(runners), ``quick_eval`` (periodic val evaluation through the engine), ``model_card``, ``common``
(checkpoints, budgets, logs). Entry point: ``python -m groma_ros.train``.
"""
