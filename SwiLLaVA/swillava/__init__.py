"""SwiLLaVA: the switch adapter (SEAL-style VQA LLM with a second, Perceiver-based object projector).

It shares only the torch-free `eval` package (question/answers files, input checks, metrics) with the
other projects; both are importable once the repository is installed (`make`, or `pip install -e .`).
"""

from eval.logs import quiet_third_party

quiet_third_party()
