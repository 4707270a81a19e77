"""Synthetic faces for scale benchmarks: N distinct, decodable 48x48 grey faces made from real FER2013 faces.

Face ``i`` is FER2013 face ``i mod 35,887`` (the tar's order) under changes drawn from a generator seeded with
``(seed, i)``: a crop of 80-100 % of the side at a random place, resized back to 48 px, a rotation of up to 12
degrees, a horizontal flip half the time, brightness and contrast changes of up to 25 % and Gaussian noise of
sigma 3. The copies of one real face differ in their pixels and (almost always) in their 64-bit pHash, so the
ingest's dedup treats them as distinct faces, as it would a real crawl; FER2013's own twins stay twins at the same
change only when the draws coincide. The same (N, seed) writes the same bytes, so a benchmark can regenerate its
input instead of storing it.

Written as a flat folder (``format: flat_folder``), 10,000 files per sub-folder (``c0000/i0000000.png``), in chunks
on a process pool; an existing folder with a ``_DONE`` file for the same N and seed is kept.

Usage: python bench/synth_faces.py --n 100000 --out /tmp/synth100k [--seed 0] [--fer ../shared/data/fer2013]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PER_FOLDER = 10_000
CHUNK = 2_000


def fer_faces(fer: Path) -> list[bytes]:
    """Every PNG of the FER2013 tar, in member order."""
    out = []
    with tarfile.open(fer / "fer2013_ferplus_png.tar") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".png"):
                f = tar.extractfile(m)
                assert f is not None
                out.append(f.read())
    return out


def synth_face(base: bytes, seed: int, i: int) -> bytes:
    """PNG bytes of synthetic face ``i`` made from the real face ``base`` (see the module docstring)."""
    rng = np.random.default_rng((seed, i))
    img = Image.open(io.BytesIO(base)).convert("L")
    side = img.width
    crop = round(side * rng.uniform(0.8, 1.0))
    x, y = (int(v) for v in rng.integers(0, side - crop + 1, size=2))
    img = img.crop((x, y, x + crop, y + crop)).resize((side, side), Image.BILINEAR)
    img = img.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR, fillcolor=int(rng.integers(0, 256)))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    a = np.asarray(img, dtype=np.float32)
    a = (a - a.mean()) * rng.uniform(0.75, 1.25) + a.mean() * rng.uniform(0.75, 1.25)
    a = a + rng.normal(0.0, 3.0, size=a.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _write_chunk(args: tuple[Path, int, int, int]) -> int:
    out, start, stop, seed = args
    faces = _FACES
    for i in range(start, stop):
        d = out / f"c{i // PER_FOLDER:04d}"
        d.mkdir(exist_ok=True)
        path = d / f"i{i:07d}.png"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(synth_face(faces[i % len(faces)], seed, i))
        os.replace(tmp, path)
    return stop - start


_FACES: list[bytes] = []


def _init(fer: Path) -> None:
    global _FACES
    _FACES = fer_faces(fer)


def generate(
    n: int, out: Path, *, seed: int = 0, fer: Path = REPO.parent / "shared/data/fer2013", workers: int = 0
) -> float:
    """Write faces 0..n-1 into ``out`` (kept when already complete for (n, seed)); returns the seconds it took."""
    done = out / "_DONE"
    want = {"n": n, "seed": seed, "version": 1}
    if done.exists() and json.loads(done.read_text()) == want:
        return 0.0
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(out, s, min(s + CHUNK, n), seed) for s in range(0, n, CHUNK)]
    written = 0
    with ProcessPoolExecutor(workers or os.cpu_count(), initializer=_init, initargs=(fer,)) as pool:
        for k in pool.map(_write_chunk, jobs):
            written += k
            print(f"\rsynth: {written:,}/{n:,} faces", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    done.write_text(json.dumps(want))  # last: the folder is complete
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fer", type=Path, default=REPO.parent / "shared/data/fer2013")
    args = p.parse_args()
    s = generate(args.n, args.out, seed=args.seed, fer=args.fer)
    print(f"{args.n:,} faces in {args.out} ({s:.1f} s, {args.n / max(s, 1e-9):,.0f} faces/s)")


if __name__ == "__main__":
    main()
