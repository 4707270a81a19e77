"""jobs/evaluate.py's engine function: any checkpoint on an ingested source, shared classes, leakage rows left out."""

from __future__ import annotations

import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import accuracy_score, f1_score

from engine.config import ModelConfig
from engine.errors import ConfigError
from engine.labels import get_label_space
from engine.products.evaluation import evaluate_checkpoint, shared_classes


def test_shared_classes_keep_data_order_and_map_labels():
    names, cols, label_map = shared_classes(get_label_space("abaw8"), get_label_space("ferplus8"))
    assert names == ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"]
    assert cols.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert label_map.tolist() == [0, 1, 2, 3, 4, 5, 6, -1]  # Contempt: the abaw8 model lacks it
    names, cols, label_map = shared_classes(get_label_space("negative4"), get_label_space("basic7"))
    assert names == ["Anger", "Disgust", "Fear", "Sadness"]
    assert cols.tolist() == [0, 1, 2, 3]
    assert label_map.tolist() == [-1, 0, 1, 2, -1, 3, -1]


def test_evaluate_checkpoint_matches_a_hand_computed_evaluation(tiny_campaign, tmp_path):
    import dataclasses

    import torch

    from engine.models.checkpoint import save_checkpoint
    from engine.models.factory import create_model
    from engine.models.teacher import load_teacher

    # The shared campaign's ingested source (found committed: evaluation ingests only what is missing), no flip TTA.
    base = tiny_campaign.cfg
    cfg = dataclasses.replace(
        base,
        storage=dataclasses.replace(base.storage, root=str(tiny_campaign.root)),
        eval=dataclasses.replace(base.eval, tta_flip=False),
    )
    torch.manual_seed(0)
    abaw8 = get_label_space("abaw8")  # one class (Other) more than the data's basic7
    ckpt = str(tmp_path / "m.pt")
    mcfg = ModelConfig(name="tiny_cnn")
    save_checkpoint(ckpt, create_model(mcfg, len(abaw8)), model_cfg=mcfg, label_space=abaw8)

    m = evaluate_checkpoint(cfg, ckpt, "fer2013", split="test")

    manifest = pq.read_table(tiny_campaign.root / "sources/fer2013/manifest").to_pandas()
    test = manifest[(manifest.split == "test") & (manifest.label >= 0)]
    leaky = test.leak_with.fillna("").str.contains("train|unlabelled|val")
    rows = test[~leaky].sort_values("key")
    assert m["labelled_rows"] == len(test)
    assert m["excluded_leakage"] == int(leaky.sum())
    assert m["n"] == len(rows) > 0
    assert m["excluded_unshared"] == 0
    images = {}
    for shard in sorted(set(rows.shard)):
        with tarfile.open(tiny_campaign.root / f"sources/fer2013/shards/{shard}.tar") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext == "png":
                    images[key] = tar.extractfile(member).read()
    from engine.imaging import decode_pixels

    probs = load_teacher([ckpt]).predict([decode_pixels(images[k]) for k in rows.key]).probs[:, :7]
    pred = (probs / probs.sum(1, keepdims=True)).argmax(1)
    y = rows.label.to_numpy()
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=np.unique(y)), abs=1e-12)
    assert m["macro_f1_classes"] == [get_label_space("basic7").classes[i] for i in np.unique(y)]
    assert sum(v["support"] for v in m["per_class"].values()) == len(rows)

    with pytest.raises(ConfigError, match="split"):
        evaluate_checkpoint(cfg, ckpt, "fer2013", split="train")
    with pytest.raises(ConfigError, match="unknown source"):
        evaluate_checkpoint(cfg, ckpt, "nope")


def test_a_small_split_predicted_in_process_equals_its_ray_tasks_bit_for_bit(tiny_campaign, monkeypatch):
    """``eval.in_process_rows``: the same per-shard function in the driver (one torch thread, given back after) or
    as one Ray task per shard gives the same keys, labels and probabilities, to the bit; once Ray runs, or on a
    cluster (``RAY_ADDRESS``), the Ray path is taken whatever the size."""
    import torch

    from engine import runtime
    from engine.partition_rule import load_rule
    from engine.stages import evaluate

    root = str(tiny_campaign.root)
    rule = load_rule(root, "demo")
    ckpt = str(tiny_campaign.root / "campaigns/demo/rounds/r001/train/student.pt")
    on_ray = evaluate.predict_split(root, rule, ckpt, "val", 64, True, in_process_rows=0)
    threads = torch.get_num_threads()
    calls, real = [], evaluate._predict_here
    with monkeypatch.context() as m:
        m.setattr(runtime, "ray_running", lambda: False)  # as in jobs/evaluate.py, which has not started Ray
        m.setattr(evaluate, "_predict_here", lambda *a: calls.append(1) or real(*a))
        here = evaluate.predict_split(root, rule, ckpt, "val", 64, True, in_process_rows=len(on_ray.keys))
    assert calls == [1] and torch.get_num_threads() == threads
    assert len(on_ray.keys) > 0 and [str(k) for k in on_ray.keys] == [str(k) for k in here.keys]
    assert np.array_equal(on_ray.y, here.y) and on_ray.probs.tobytes() == here.probs.tobytes()

    ran_here = []
    monkeypatch.setattr(evaluate, "_predict_here", lambda *a: ran_here.append(1) or iter(()))
    evaluate.predict_split(root, rule, ckpt, "val", 64, True, in_process_rows=10**9)  # Ray runs: its workers
    with monkeypatch.context() as m:
        m.setattr(runtime, "ray_running", lambda: False)
        evaluate.predict_split(root, rule, ckpt, "val", 64, True, in_process_rows=len(on_ray.keys) - 1)  # one too many
        m.setenv("RAY_ADDRESS", tiny_campaign.cfg.storage.root)  # any value: "on a cluster"
        evaluate.predict_split(root, rule, ckpt, "val", 64, True, in_process_rows=10**9)
    assert ran_here == []
