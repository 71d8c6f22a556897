"""RoiLLaVA: LLaVA-1.5 (System 1) and the Chain-of-Spot region-of-interest adapter, on llava-hf models."""
