"""A background build the app watches: progress with a time estimate, cancel, failure, one message each."""
import threading

import pytest

from vlmviz.views.background import BackgroundBuild, describe_settings


def test_a_build_reports_its_stage_and_estimate_then_its_result(tmp_path):
    gate, seen = threading.Event(), threading.Event()

    def build(progress, should_stop):
        for step in range(1, 11):
            progress("training", step, 10)
            if step == 5:
                seen.set()
                gate.wait(10)
        return tmp_path / "made.safetensors"

    job = BackgroundBuild("the thing", build, estimate="a minute")
    assert job.message() == "The thing is not built yet (a minute)."
    assert job.start() and not job.start()  # one build at a time
    seen.wait(10)
    status = job.status()
    assert status["state"] == "running" and (status["done"], status["total"]) == (5, 10)
    assert status["left_s"] is not None and status["left_s"] >= 0  # 5 of 10 done: a rate to estimate from
    assert "training 5/10" in job.message() and "left in this stage" in job.message()
    gate.set()
    assert job.wait(10) == "done" and job.status()["path"].name == "made.safetensors"
    assert "is ready" in job.message()
    assert not job.start()  # done stays done


def test_cancel_stops_at_the_next_check_and_a_failure_is_one_line():
    started = threading.Event()

    def build(progress, should_stop):
        started.set()
        while not should_stop():
            progress("encoding", 1, 100)
            threading.Event().wait(0.01)
        raise RuntimeError("cancelled after 1 of 100 images; nothing saved")

    job = BackgroundBuild("the thing", build)
    assert not job.cancel()  # nothing running
    job.start()
    started.wait(10)
    assert job.cancel()
    assert job.wait(10) == "cancelled"
    assert job.message() == "Building the thing was cancelled after 1 of 100 images; nothing saved."
    assert job.start() and job.wait(0) in ("running", "cancelled")  # a cancelled build can start again
    job.cancel()
    job.wait(10)

    def broken(progress, should_stop):
        raise ValueError("expected a folder of images, got /tmp/x/secret/path.txt")

    bad = BackgroundBuild("the thing", broken)
    bad.start()
    assert bad.wait(10) == "failed"
    assert bad.message().startswith("Building the thing failed: expected a folder of images")
    assert "\n" not in bad.message()


def test_describe_settings_from_the_environment():
    assert describe_settings("") == {}
    assert describe_settings("steps=4, n_train=16,n_test=4") == {"steps": 4, "n_train": 16, "n_test": 4}
    with pytest.raises(ValueError, match="expected steps=N"):
        describe_settings("epochs=3")
