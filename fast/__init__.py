"""FaST: the switch, ROI and seg adapters composed on one LLaVA-1.5 base (System 1 fast, System 2 slow)."""

from .paths import add_sibling_paths

add_sibling_paths()

from eval.logs import quiet_third_party  # noqa: E402

quiet_third_party()
