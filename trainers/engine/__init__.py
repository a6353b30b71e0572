"""The inference engine: continuous-batching, calculator-aware decoding over a slot KV cache, and the
conversion of problems into decode rows and of decoded rows into sample records."""
