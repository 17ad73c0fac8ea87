"""Captioning through a frozen LM (LLaVA stage 1): the visual LM, its training, the captioner, evaluation."""
