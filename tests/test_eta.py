"""Time estimates said before and while long work runs (issue 14, item 7)."""

from vlmviz.views import eta
from vlmviz.views import reduce


def test_say_rounds_to_what_a_person_reads():
    assert eta.say(0.2) == "about 1 s" and eta.say(40) == "about 40 s"
    assert eta.say(180) == "about 3 min" and eta.say(4200) == "about 70 min" and eta.say(7800) == "about 2 h 10 min"


def test_progress_counts_down_from_the_rate_and_shows_an_estimate_before_it_counts():
    p = eta.Progress("fitting UMAP", estimate=eta.Estimate(40, "numba compiles once"))
    assert "estimated about 40 s (numba compiles once)" in p.line() and "s so far" in p.line()
    p.stage("encoding", unit="images")
    p.stage_started -= 10  # 10 s spent on 5 of 20 images: 30 s to go
    p.update(5, 20)
    assert abs(p.left() - 30) < 1
    assert "5 of 20 images" in p.line() and "about 30 s left" in p.line()


def test_caption_estimate_uses_the_step_time_measured_here(tmp_path, monkeypatch):
    monkeypatch.setattr(eta, "_rates_path", lambda: tmp_path / "step-times.json")
    first = eta.caption_steps_estimate("caption:resampler", 30, 8)
    assert abs(first.seconds - 30 * eta.CAPTION_STEP_S) < 1e-6 and "idle 2-core CPU" in first.why
    eta.remember("caption:resampler", 17.0)
    again = eta.caption_steps_estimate("caption:resampler", 30, 8)
    assert again.seconds == 510 and "measured here last time" in again.why
    assert eta.recall("caption:other") is None


def test_umap_estimate_includes_numba_compilation_only_before_the_first_fit(monkeypatch):
    monkeypatch.setattr(reduce, "_UMAP_FITTED", type(reduce._UMAP_FITTED)())
    cold = eta.umap_estimate(600)
    assert cold.seconds > eta.UMAP_COLD_S and "numba" in cold.why
    reduce._UMAP_FITTED.set()
    assert eta.umap_estimate(600).seconds < 2
