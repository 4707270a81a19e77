"""Ingest on a local Ray with real FER2013 images: exact counts, idempotence, crash-resume, bad inputs, readers."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from engine.config import IngestConfig, SourceConfig
from engine.imaging import decode_pixels
from engine.layout import SourceLayout
from engine.stages import ingest as ingest_mod
from tests.fixtures import ingest_stage, make_bad_inputs

LIMIT = 60  # rows per split: 180 real images


def _fer_source(fer2013_dir, limit=LIMIT):
    return SourceConfig(name="fer", format="fer2013", path=str(fer2013_dir), limit=limit)


def _expected(fer2013_dir, limit):
    """Independent reference: the first `limit` members per folder, exact pixel twins within a role."""
    per_folder: dict[str, list[bytes]] = {}
    with tarfile.open(fer2013_dir / "fer2013_ferplus_png.tar") as tar:
        for m in tar:
            folder = m.name.split("/")[0]
            if len(per_folder.setdefault(folder, [])) < limit:
                px = np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())))
                per_folder[folder].append(hashlib.sha256(px.tobytes()).digest())
    dups = sum(len(v) - len(set(v)) for v in per_folder.values())
    return 3 * limit, dups


def _files(root):
    """Every output file under ``root`` (writer locks aside: they name the latest run, engine.io.lock)."""
    return {
        p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".lock"
    }


CFG = IngestConfig(samples_per_shard=40, list_chunk_rows=50, in_process_rows=0)
"""Ray tasks for every phase, whatever the size."""
HERE = IngestConfig(samples_per_shard=40, list_chunk_rows=50, in_process_rows=10**6)
"""Every phase in the test's process (``ingest.in_process_rows``), with the same functions."""


@pytest.fixture(scope="module")
def clean_ingest(ray_local, fer2013_dir, tmp_path_factory):
    """One uninterrupted ingest of 60 rows per split on Ray tasks (shards of 40, listing parts of 50 rows): the counts
    test reads it, the crash test compares its own resumed in-process ingest with it byte for byte."""
    root = tmp_path_factory.mktemp("clean")
    return root, ingest_stage(str(root), _fer_source(fer2013_dir), CFG).execute()


def test_fer2013_counts_idempotence_and_readers(ray_local, fer2013_dir, clean_ingest):
    tmp_path, res = clean_ingest
    cfg = CFG
    inputs, dups = _expected(fer2013_dir, LIMIT)
    c = res.counts
    assert c["inputs"] == inputs
    assert c["duplicates"] == dups
    assert c["kept"] == inputs - dups
    assert c["kept"] + c["quarantined"] == c["inputs"]
    assert c["shards"] == -(-c["kept"] // 40)
    assert set(c["by_split"]) == {"train", "val", "test"}

    lay = SourceLayout(str(tmp_path), "fer")
    manifest = pq.read_table(lay.manifest_dir)
    assert manifest.num_rows == c["kept"]
    assert len(set(manifest["key"].to_pylist())) == c["kept"]
    assert manifest.schema.field("phash").type == "uint64"
    assert all(k.startswith("fer_") and "." not in k for k in manifest["key"].to_pylist())

    import webdataset as wds

    shards = sorted(str(p) for p in (tmp_path / "sources/fer/shards").glob("*.tar"))
    wkeys = [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)]
    assert sorted(wkeys) == sorted(manifest["key"].to_pylist())
    rkeys = ray_local.data.read_webdataset(shards).select_columns(["__key__"]).take_all()
    assert sorted(r["__key__"] for r in rkeys) == sorted(wkeys)

    before = _files(tmp_path / "sources")
    again = ingest_stage(str(tmp_path), _fer_source(fer2013_dir), cfg).execute()
    assert again.skipped
    assert _files(tmp_path / "sources") == before


def test_crash_then_resume_in_process_is_byte_identical_to_the_ray_ingest(
    ray_local, fer2013_dir, clean_ingest, tmp_path, monkeypatch
):
    """An in-process ingest (``HERE``) crashed after decoding, one decoded part lost, resumed: its shards, manifest,
    quarantine and duplicates equal those of the uninterrupted ingest on Ray tasks byte for byte."""
    cfg = HERE
    clean = clean_ingest[0]

    crashed = tmp_path / "crashed"
    real = ingest_mod.IngestStage._shard

    def crash_after_decode(self, *a, **k):
        raise RuntimeError("simulated crash after the decode phase")

    monkeypatch.setattr(ingest_mod.IngestStage, "_shard", crash_after_decode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest_stage(str(crashed), _fer_source(fer2013_dir), cfg).execute()
    # drop one decoded part, as if the process died while decoding it
    decoded = sorted((crashed / "sources/fer/_work/decoded").glob("part-*.parquet"))
    assert len(decoded) == 4
    decoded[-1].unlink()
    monkeypatch.setattr(ingest_mod.IngestStage, "_shard", real)
    ingest_stage(str(crashed), _fer_source(fer2013_dir), cfg).execute()
    for sub in ("shards", "manifest"):
        a, b = _files(clean / "sources/fer" / sub), _files(crashed / "sources/fer" / sub)
        assert a == b and len(a) > 0
    for name in ("quarantine.parquet", "duplicates.parquet"):
        a, b = clean / "sources/fer" / name, crashed / "sources/fer" / name
        assert a.read_bytes() == b.read_bytes(), name


def test_bad_inputs_are_quarantined_with_reasons(ray_local, tmp_path):
    bad = make_bad_inputs(tmp_path / "in")
    from tests.fixtures import face

    for i in range(3):
        (tmp_path / "in" / f"good{i}.png").write_bytes(face(i))
    os.mkfifo(tmp_path / "in" / "fifo.png")  # opening it would block the ingest forever
    with open(os.fsencode(tmp_path / "in") + b"/caf\xe9.png", "wb") as f:  # a name that is not UTF-8: kept
        f.write(face(3))
    (tmp_path / "secret.png").write_bytes(face(4))
    (tmp_path / "in" / "link.png").symlink_to(tmp_path / "secret.png")  # leads outside the source: never read
    long_name = "f" * 251 + ".png"  # 255 bytes, legal on ext4: once a USTAR error that stopped the whole source
    (tmp_path / "in" / long_name).write_bytes(face(5))
    deep = Path("/".join(f"level{i:02d}" for i in range(40))) / "face.png"
    (tmp_path / "in" / deep).parent.mkdir(parents=True)
    (tmp_path / "in" / deep).write_bytes(face(6))
    grey = np.asarray(Image.open(io.BytesIO(face(7))))
    Image.fromarray((grey / 255.0).astype(np.float32)).save(tmp_path / "in" / "float01.tif")  # once stored black
    Image.fromarray(np.full((48, 48), -1.0, np.float32)).save(tmp_path / "in" / "negative.tif")
    src = SourceConfig(name="mixed", format="flat_folder", path=str(tmp_path / "in"), split="unlabelled")
    res = ingest_stage(str(tmp_path / "root"), src, IngestConfig()).execute()
    assert res.counts["inputs"] == len(bad) + 2 + 4 + 4
    assert res.counts["kept"] == 4 + 3
    manifest = pq.read_table(tmp_path / "root/sources/mixed/manifest").to_pylist()
    latin = [r for r in manifest if r["orig_path"] == "caf\\xe9.png"]
    assert len(latin) == 1 and latin[0]["key"].startswith("mixed_caf_png_")
    by_path = {r["orig_path"]: r["key"] for r in manifest}
    assert len(by_path[long_name]) == len(by_path[deep.as_posix()]) == 95  # the full path stays in orig_path
    stored = {}
    for tar in sorted((tmp_path / "root/sources/mixed/shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            stored |= {m.name: tf.extractfile(m).read() for m in tf if m.name.endswith(".png")}
    assert np.array_equal(decode_pixels(stored[by_path["float01.tif"] + ".png"]), grey)  # the face, not black
    assert stored[by_path[long_name] + ".png"] == face(5)
    q = pq.read_table(tmp_path / "root/sources/mixed/quarantine.parquet").to_pylist()
    reasons = {r["orig_path"]: r["reason"] for r in q}
    assert reasons == {
        "empty.png": "empty",
        "truncated.png": "truncated",
        "text.jpg": "not_an_image",
        "tiny.png": "too_small",
        "bomb.png": "too_large",
        "fifo.png": "not_a_file",
        "link.png": "outside_root",
        "negative.tif": "ambiguous_range",
    }
    assert all(r["detail"] for r in q)


def test_two_concurrent_ingests_of_one_new_root_one_writes_the_other_is_refused_in_one_line(
    ray_local, fer2013_dir, tmp_path
):
    """Two ``jobs/ingest.py`` started together on the same new root (both joined to the suite's Ray): one commits
    the source, the other ends with exit code 2 and one line naming the first (pid, host); the committed source is
    whole (every file matches its sha256, no ``_work`` left)."""
    import socket
    import subprocess
    import sys

    from engine.io.checksums import verify_root
    from tests.integration.processes import tiny_overrides

    repo = Path(__file__).resolve().parents[2]
    root = tmp_path / "store"
    cmd = [sys.executable, "jobs/ingest.py", "--config", "conf/demo.yaml", *tiny_overrides(root, fer2013_dir, 1)]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    procs = [
        subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    ends = [(p.pid, p.wait(timeout=600), *p.communicate()) for p in procs]
    assert sorted(rc for _, rc, _, _ in ends) == [0, 2], [e[3][-3000:] for e in ends]
    (winner, *_), (_, _, _, err) = sorted(ends, key=lambda e: e[1])
    out_dir = SourceLayout(str(root), "fer2013").dir
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"error: ingest fer2013: {out_dir} is being written by pid {winner} on {socket.gethostname()} (since "
        )
    )
    check = verify_root(str(root))
    assert (check.bad, check.unchecked, check.files > 0) == ({}, 0, True)
    assert not (Path(out_dir) / "_work").exists()

    # Run again: the source is committed with this config, so the job checks its files and reports without starting
    # Ray at all. RAY_ADDRESS names a port where nothing listens: connecting would hang until the timeout.
    again = subprocess.run(
        cmd, cwd=repo, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}, capture_output=True, text=True, timeout=90
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.splitlines()[0].startswith("ingest fer2013: skipped (already committed, nothing to do)")


def test_sigterm_mid_ingest_ends_in_one_line_leaves_no_process_and_the_rerun_completes(
    ray_local, fer2013_dir, tmp_path
):
    """SIGTERM (what ``timeout``, ``kill`` or a scheduler send) to an ingest that started its own local Ray, while it
    decodes: one ``interrupted:`` line and exit 143 (not Ray's C++ stack lines), no process it started alive
    afterwards (found by an environment marker every child inherits), nothing committed; the same command again
    (joined to the suite's Ray) commits the source whole."""
    import signal
    import subprocess
    import sys
    import time

    from engine.cli import INTERRUPTED
    from engine.io.checksums import verify_root
    from tests.integration.processes import kill_all, leftovers, tiny_overrides, with_env

    repo = Path(__file__).resolve().parents[2]
    root = tmp_path / "store"
    cmd = [sys.executable, "jobs/ingest.py", "--config", "conf/demo.yaml", *tiny_overrides(root, fer2013_dir, 1)]
    cmd += ["--set", "sources.fer2013.limit=1000"]  # long enough to be mid-decode when the signal lands
    cmd += ["--set", "ingest.in_process_rows=0"]  # on a local Ray the job starts (a small source would not start it)
    marker = f"ENGINE_TEST_JOB=sigterm-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | dict([marker.split("=", 1)])
    log = tmp_path / "ingest.log"
    with open(log, "w") as out:
        job = subprocess.Popen(cmd, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 300
            while "ingest fer2013: running" not in log.read_text():
                assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            job.send_signal(signal.SIGTERM)
            rc = job.wait(timeout=120)
        finally:
            left = leftovers(marker)
            kill_all(with_env(marker))
    text = log.read_text()
    assert (rc, text.strip().splitlines()[-1]) == (143, f"interrupted: {INTERRUPTED}"), text[-3000:]
    assert "SIGTERM received" not in text and "Traceback" not in text
    assert left == []
    out_dir = Path(SourceLayout(str(root), "fer2013").dir)
    assert out_dir.is_dir() and not (out_dir / "_SUCCESS.json").exists()

    again = subprocess.run(
        cmd,
        cwd=repo,
        env={**env, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    check = verify_root(str(root))
    assert (check.bad, check.unchecked, check.stages) == ({}, 0, 1)


def test_a_small_source_is_ingested_in_the_job_process_without_starting_ray(fer2013_dir, tmp_path):
    """``jobs/ingest.py`` on 450 listed rows (below ``ingest.in_process_rows``) without ``RAY_ADDRESS``: every phase
    runs in the job's process, no Ray process is started (none carries the job's environment marker while it runs
    or after), and the committed source checks out whole."""
    import subprocess
    import sys
    import time

    from engine.io.checksums import verify_root
    from tests.integration.processes import kill_all, leftovers, tiny_overrides, with_env

    repo = Path(__file__).resolve().parents[2]
    root = tmp_path / "store"
    cmd = [sys.executable, "jobs/ingest.py", "--config", "conf/demo.yaml", *tiny_overrides(root, fer2013_dir, 1)]
    marker = f"ENGINE_TEST_JOB=small-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | dict([marker.split("=", 1)])
    seen: set[str] = set()
    log = tmp_path / "ingest.log"
    with open(log, "w") as out:
        job = subprocess.Popen(cmd, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            while job.poll() is None:  # the job's own process carries the marker too: count only others
                seen |= {str(p) for p in with_env(marker) if p[0] != job.pid}
                time.sleep(0.05)
            left = leftovers(marker)
        finally:
            kill_all(with_env(marker))
    err = log.read_text()
    assert job.returncode == 0, err[-3000:]
    assert "ingest fer2013: 450 rows: in this process (ingest.in_process_rows=5000)" in err
    assert "Started a local Ray" not in err and "engine.runtime: ray:" not in err
    assert (seen, left) == (set(), [])
    check = verify_root(str(root))
    assert (check.bad, check.unchecked, check.stages) == ({}, 0, 1)


def test_twins_within_and_across_splits_get_the_same_decisions_in_process_and_on_ray(ray_local, tmp_path):
    """An image folder with planted twins: an exact copy within train (quarantined as a duplicate), an exact copy
    of a train face in val and in test (leakage), a one-pixel change of a train face in test (a pHash twin: leakage).
    Ingested on Ray tasks and in this process, every committed file is the same, byte for byte."""
    from tests.fixtures import face

    src_dir = tmp_path / "faces"
    files = {
        "train/Happiness/a.png": face(0),
        "train/Happiness/a_copy.png": face(0),
        "train/Sadness/b.png": face(1),
        "train/Sadness/c.png": face(2),
        "val/Happiness/a_in_val.png": face(0),
        "val/Anger/d.png": face(3),
        "test/Sadness/b_in_test.png": face(1),
        "test/Fear/e.png": face(4),
    }
    for rel, data in files.items():
        (src_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (src_dir / rel).write_bytes(data)
    pixels = np.asarray(Image.open(io.BytesIO(face(2)))).copy()
    pixels[0, 0] = pixels[0, 0] + 1 if pixels[0, 0] < 255 else 254
    (src_dir / "test/Sadness").mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(src_dir / "test/Sadness/c_changed.png")
    src = SourceConfig(name="twins", format="image_folder", path=str(src_dir))

    def ingest(root: Path, in_process_rows: int) -> dict[Path, bytes]:
        cfg = IngestConfig(samples_per_shard=4, list_chunk_rows=3, in_process_rows=in_process_rows)
        res = ingest_stage(str(root), src, cfg).execute()
        assert (res.counts["inputs"], res.counts["duplicates"], res.counts["kept"]) == (9, 1, 8)
        return {p: b for p, b in _files(root / "sources/twins").items() if p.name != "_SUCCESS.json"}

    on_ray, here = ingest(tmp_path / "ray", 0), ingest(tmp_path / "here", 100)
    assert on_ray == here
    decisions = pq.read_table(tmp_path / "here/sources/twins/duplicates.parquet").to_pylist()
    by_path = {r["orig_path"]: (r["duplicate_of"] is not None, r["leak_with"]) for r in decisions}
    assert by_path == {
        "train/Happiness/a_copy.png": (True, "val"),
        "train/Happiness/a.png": (False, "val"),
        "val/Happiness/a_in_val.png": (False, "train"),
        "train/Sadness/b.png": (False, "test"),
        "test/Sadness/b_in_test.png": (False, "train"),
        "train/Sadness/c.png": (False, "test"),
        "test/Sadness/c_changed.png": (False, "train"),
    }
