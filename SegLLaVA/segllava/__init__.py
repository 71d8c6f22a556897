"""SegLLaVA: the segmentation adapter (LISA-style [SEG] token decoded by a SAM mask decoder)."""
