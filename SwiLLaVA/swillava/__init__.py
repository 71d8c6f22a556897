"""SwiLLaVA: the switch adapter (SEAL-style VQA LLM with a second, Perceiver-based object projector)."""
