"""On-device runtime: standard library, numpy, ai_edge_litert and litert_lm only.

``signatures.BundleModel`` drives a bundle's prefill/decode signatures with
ai-edge-litert's interpreter; ``litertlm_file`` reads the ``.litertlm`` section
table; ``runner`` writes the benchmark JSONL.
"""
