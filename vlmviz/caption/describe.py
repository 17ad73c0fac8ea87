"""Describe an image with the app's chosen connector: the UI-agnostic side of the Inspect tab's Describe button.

Only a connector trained with the caption objective can describe; for anything else the answer says so and how to
make one. Captioners are cached per checkpoint file (path + modification time), a few at a time; one that falls out
of the cache takes its cross-attention hooks off the shared LM.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from .captioner import Captioner, load_captioner
from ..checkpoints import read_config

HOW_TO = ("Describing needs a connector trained with the caption objective (LLaVA stage 1: the connector learns "
          "through the frozen SmolLM2's next-token loss). Make one in the Train tab: loss 'caption' (pooling 'none', "
          "a resampler or pixel_shuffle on 'patch' tokens, a few dozen steps), then pick it in the Connector menu "
          "above. Or on the command line: python -m vlmviz train --preset caption-stage1 --out captioner.safetensors, "
          "and add the file in the Checkpoints tab.")
MODES = ("greedy", "sampled")

_CAPTIONERS: "OrderedDict[tuple, Captioner]" = OrderedDict()
_LOCK = threading.Lock()


def get_captioner(path: str | Path, keep: int = 3) -> Captioner:
    path = Path(path)
    key = (str(path), path.stat().st_mtime_ns)
    with _LOCK:
        if key in _CAPTIONERS:
            _CAPTIONERS.move_to_end(key)
            return _CAPTIONERS[key]
    captioner = load_captioner(path)
    with _LOCK:
        _CAPTIONERS[key] = captioner
        while len(_CAPTIONERS) > keep:
            _CAPTIONERS.popitem(last=False)[1].close()
    return captioner


def caption_checkpoint(choice: str, checkpoints: dict) -> str | None:
    """The checkpoint path behind the app's connector choice when it was trained with the caption loss."""
    path = checkpoints.get(choice)
    if path is None:
        return None
    return path if read_config(path).get("loss") == "caption" else None


# BENCHMARKS.md (captioning): the measured captioners trained 200 steps on 600 scenes and reached held-out caption
# losses of 0.36-0.70; an untrained connector sits near 4.8. Below these a captioner is called undertrained.
ENOUGH_STEPS, GOOD_LOSS = 200, 1.0
HELPS = ("What helps: 200 or more steps on 600 or more scenes (the caption-stage1 recipe), pixel_shuffle on "
         "'patch' tokens of vit-s14@4 (held-out loss 0.36 in BENCHMARKS.md).")


def repetitive(text: str) -> bool:
    """Degenerate output: nothing, or a few words said over and over ('A: A A: A A: A')."""
    words = text.split()
    if not words:
        return True
    if len(words) < 4:
        return False
    grams = [tuple(words[i:i + 2]) for i in range(len(words) - 1)]  # a repeated pair repeats its words too
    return len(set(words)) / len(words) <= 0.4 or max(grams.count(g) for g in set(grams)) >= 3


def caption_note(config: dict, text: str) -> str:
    """What to say beside a caption: '' when the captioner is trained well enough and the text reads as a
    caption; otherwise a warning naming what was recorded (steps, held-out loss) and what would help."""
    steps = int(config.get("steps") or 0)
    metrics = config.get("metrics") or {}
    loss = metrics.get("caption_loss", metrics.get("heldout_loss"))  # a Train-tab run / the built-in captioner
    facts = [f"{steps} training steps" if steps else "no recorded step count",
             f"held-out caption loss {loss:.2f}" if isinstance(loss, (int, float)) else "no held-out loss recorded"]
    weak = steps < ENOUGH_STEPS or not isinstance(loss, (int, float)) or loss > GOOD_LOSS
    if repetitive(text):
        return (f"⚠️ **Not a caption**: the LM repeats itself, the sign of a connector it cannot read yet "
                f"({', '.join(facts)}). {HELPS}")
    if weak:
        return (f"⚠️ **Undertrained captioner** ({', '.join(facts)}; the measured ones reach 0.36-0.70 after "
                f"{ENOUGH_STEPS} steps): read this text as a guess. {HELPS}")
    return ""


def describe_with_note(choice: str, checkpoints: dict, image, mode: str = "greedy",
                       fallback: str | Path | None = None) -> tuple[str, str]:
    """describe_choice plus caption_note about whichever captioner wrote (the chosen one, else `fallback`): the app
    shows the note beside the text, so degenerate output never stands alone as a caption."""
    path = caption_checkpoint(choice, checkpoints) or fallback
    text = describe_choice(choice, checkpoints, image, mode, fallback=fallback)
    return text, caption_note(read_config(path), text) if path else ""


def describe_choice(choice: str, checkpoints: dict, image, mode: str = "greedy", seed: int = 0,
                    max_new_tokens: int = 32, fallback: str | Path | None = None) -> str:
    """A caption of `image` by the chosen connector, or the explanation of what is needed. `fallback`, the built-in
    Describe captioner when it is built, writes the caption when the chosen connector cannot, and the answer says
    so and what that captioner was trained on."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    path = caption_checkpoint(choice, checkpoints)
    note = ""
    if path is None:
        if choice.startswith("vlm: "):
            what = "a real VLM's own connector: vlmviz keeps only its tower, connector and embedding table, not its LM"
        elif choice.startswith("untrained "):
            what = "an untrained connector"
        else:  # the user's checkpoint or a contrastive built-in
            what = f"{choice!r}, which was not trained to caption"
        if fallback is None:
            return f"Cannot describe with {what}. {HOW_TO}"
        path, config = fallback, read_config(fallback)
        note = (f"\n\n(Written by the built-in Describe captioner, since the top bar's connector is {what}. "
                f"It was trained on {config.get('trained_on') or 'synthetic scenes'})")
    if image is None:
        raise ValueError("no image: upload one or pick one from the gallery")
    captioner = get_captioner(path)
    sample = mode == "sampled"
    return captioner.describe([image], max_new_tokens=max_new_tokens, sample=sample, seed=seed)[0] + note
