"""RoiLLaVA: LLaVA-1.5 (System 1) and the Chain-of-Spot region-of-interest adapter, on llava-hf models.

It shares only the torch-free `eval` package (question/answers files, input checks, metrics) with the
other projects; both are importable once the repository is installed (`make`, or `pip install -e .`).
"""

from eval.logs import quiet_third_party

quiet_third_party()
