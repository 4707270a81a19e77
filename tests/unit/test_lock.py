"""One writer per stage output (engine.io.lock): a second process is refused before it touches the directory,
with the holder's host and pid; the lock dies with its holder, SIGKILL included."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config import IngestConfig, SourceConfig
from engine.errors import WriterLocked
from engine.io.lock import lock_path, writer_lock
from tests.fixtures import ingest_stage
from tests.unit.test_stage_base import Counter

REPO = Path(__file__).resolve().parents[2]
HOLD = """import sys, time
from engine.io.lock import writer_lock
with writer_lock(sys.argv[1], "holder"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(out_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_dies_with_it(tmp_path: Path) -> None:
    src = SourceConfig(name="fer", format="fer2013", path=str(tmp_path / "nowhere"), limit=10)
    stage = ingest_stage(str(tmp_path), src, IngestConfig())
    holder = _holder(Path(stage.out_dir))
    try:
        with pytest.raises(WriterLocked) as err:
            stage.execute()
        msg = str(err.value)
        assert msg.startswith(
            f"ingest fer: {stage.out_dir} is being written by pid {holder.pid} on {socket.gethostname()}"
        )
        assert msg.endswith(f"on a network filesystem that does not, delete {lock_path(stage.out_dir)}")
        assert not Path(stage.out_dir).exists()  # refused before reading or writing anything there
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    counter = Counter(stage.out_dir, 3)  # the killed holder's lock is gone: the next writer runs
    assert counter.execute().counts == {"rows": 3} and counter.calls == 1


def test_the_lock_is_free_again_after_a_stage_and_after_it_failed(tmp_path: Path) -> None:
    out = str(tmp_path / "s")
    with pytest.raises(RuntimeError, match="boom"):
        Counter(out, 3, fail=True).execute()
    with writer_lock(out, "test"):  # neither the failed nor a finished stage keeps it
        pass
    Counter(out, 3).execute()
    refused = pytest.raises(WriterLocked, match=rf"test2: {out} is being written by pid \d+ on ")
    with writer_lock(out, "test"), refused, writer_lock(out, "test2"):
        pass


HOLD_LEASE = """import sys, time
from engine.io.lock import lease_lock
with lease_lock(sys.argv[1], "holder", ttl_s=1.0, settle_s=0.0):
    print("held", flush=True)
    time.sleep(120)
"""


def test_an_object_store_lease_refuses_a_second_writer_while_its_holder_beats_and_expires_after_it_died(
    tmp_path: Path, caplog
) -> None:
    """The lease protocol of object stores, through pyarrow on a ``file://`` URI."""
    from engine.io.lock import lease_lock, lease_path

    out = f"file://{tmp_path}/select"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, out], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        for _ in range(2):  # refused at once, and still after 1.5 TTLs: the holder's heartbeat keeps it fresh
            with pytest.raises(WriterLocked) as err, lease_lock(out, "select r001", ttl_s=1.0, settle_s=0.0):
                pass
            msg = str(err.value)
            assert msg.startswith(f"select r001: {out} is being written by pid {holder.pid} on {socket.gethostname()}")
            assert msg.endswith(f"the lease expires 1 s after its last heartbeat, or delete {lease_path(out)}")
            time.sleep(1.5)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(1.1)  # the dead holder's lease outlives its last heartbeat by its TTL, then is taken over
    with lease_lock(out, "select r001", ttl_s=1.0, settle_s=0.0):
        assert (tmp_path / "select.lease").exists()
    assert "taking over" in caplog.text and not (tmp_path / "select.lease").exists()  # released on exit


HOLD_CAMPAIGN = """import sys, time
from engine.campaign import campaign_lock
from engine.config import load_config
with campaign_lock(load_config(["conf/demo.yaml"], [f"storage.root={sys.argv[1]}"])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_one_driver_per_campaign_the_second_is_refused_naming_the_first(tmp_path: Path) -> None:
    from engine.campaign import campaign_lock
    from engine.config import load_config
    from engine.layout import CampaignLayout

    cfg = load_config([REPO / "conf/demo.yaml"], [f"storage.root={tmp_path}"])
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_CAMPAIGN, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(WriterLocked) as err, campaign_lock(cfg):
            raise AssertionError("a second driver got the lock")
        camp = CampaignLayout(str(tmp_path), "demo").dir
        assert str(err.value).startswith(
            f"campaign demo: {camp} is being written by pid {holder.pid} on {socket.gethostname()} (since "
        )
        assert sorted(p.name for p in (tmp_path / "campaigns").iterdir()) == ["demo.lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with campaign_lock(cfg), campaign_lock(cfg):  # free once its holder died; re-entrant in the holding process
        pass


HOLD_WAIT = """import sys, time
from pathlib import Path
from engine.io.lock import waiting_lock
with waiting_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(1.0)
    Path(sys.argv[1] + ".done").write_text("done")  # the last thing it does while holding the lock
"""


def test_a_waiting_lock_waits_for_its_holder_instead_of_refusing(tmp_path: Path) -> None:
    from engine.io.lock import waiting_lock

    db = str(tmp_path / "mlflow.db")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WAIT, db], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    with waiting_lock(db):
        assert Path(db + ".done").exists()  # granted only once the holder let go
    holder.wait()
