"""FaST: the switch, ROI and seg adapters composed on one LLaVA-1.5 base (System 1 fast, System 2 slow)."""

from eval.runner import quiet_third_party

quiet_third_party()
