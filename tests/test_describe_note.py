"""Describe never shows degenerate text or an undertrained captioner's guess without a note (issue 14)."""
from vlmviz.caption.describe import caption_note, repetitive


def test_repetition_is_recognised_and_ordinary_captions_are_not():
    assert repetitive("A: A A: A A: A A: A")
    assert repetitive("the the the the the")
    assert repetitive("a red circle a red circle a red circle")
    assert repetitive("   ")
    assert not repetitive("a small red circle on the left")
    assert not repetitive("there is a large purple diamond on the left")
    assert not repetitive("a cat")


def test_the_note_names_what_was_recorded_and_what_helps():
    trained = {"steps": 600, "metrics": {"caption_loss": 0.45}}
    assert caption_note(trained, "a large red circle on the left") == ""
    short = caption_note({"steps": 10, "metrics": {"caption_loss": 3.9}}, "a red square")
    assert "Undertrained" in short and "10 training steps" in short and "3.90" in short and "What helps" in short
    assert "no held-out loss recorded" in caption_note({"steps": 400}, "a red square")
    looping = caption_note(trained, "A: A A: A A: A")  # however well trained, a loop is never shown as a caption
    assert "Not a caption" in looping and "600 training steps" in looping
