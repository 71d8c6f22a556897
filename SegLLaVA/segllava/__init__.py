"""SegLLaVA: the segmentation adapter (LISA-style [SEG] token decoded by a SAM mask decoder).

It shares only the torch-free `eval` package (metrics, input checks) with the other projects; both are
importable once the repository is installed (`make`, or `pip install -e .`), however SegLLaVA is started
(`cd SegLLaVA && deepspeed train_ds.py …`, `python -m segllava.validate …`).
"""

from eval.logs import quiet_third_party

quiet_third_party()
