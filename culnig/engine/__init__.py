"""Isolation ``engine``: one engine per model for a whole sweep, the checkpoints' weights swapped in.

:class:`culnig.engine.holder.EngineHolder` (the caller's side) keeps one evaluator process
(:mod:`culnig.engine.server`) per model; the HF (:mod:`culnig.engine.hf`) and vLLM
(:mod:`culnig.engine.vllm`) engines load what differs (:mod:`culnig.engine.swap`) and prove it.
"""
