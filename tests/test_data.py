"""Tests for dnas.data: datasets, subsets, resizing, CIFAR readers/cache/download and BatchLoader."""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dnas.data import (DATASETS, BatchLoader, ImageDataset, download_cifar, download_svhn, load_dataset,
                       split_indices)
from dnas.data import cifar as cifar_mod
from dnas.data.core import balanced_quotas, resize_images
from dnas.errors import DnasError

REAL_CIFAR = Path("/work/shared/data/cifar10")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    # Never touch the user's cache or pick up their data dir.
    monkeypatch.setenv("DNAS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DNAS_DATA_DIR", raising=False)


# ----------------------------------------------------------------------------------------------
# helpers that write tiny fake CIFAR data
# ----------------------------------------------------------------------------------------------


def _fake_images(labels: list[int], salt: int) -> np.ndarray:
    """N x 3 x 32 x 32 uint8; each image is flat per channel and encodes its label (R) and salt (G)."""
    x = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
    for i, y in enumerate(labels):
        x[i, 0] = 20 * y + 10
        x[i, 1] = (salt + 37 * i) % 200 + 20
        x[i, 2] = 128
    return x


def _write_pickle(path: Path, images: np.ndarray, labels: list[int], label_key: bytes) -> None:
    d = {b"data": images.reshape(len(images), -1), label_key: labels, b"batch_label": b"fake"}
    path.write_bytes(pickle.dumps(d, protocol=2))


def _write_python_cifar10(root: Path) -> tuple[np.ndarray, list[int]]:
    """5 train batches of 4 images (20 in all) and a test batch of 20; returns the test data."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(5):
        labels = [(4 * b + i) % 10 for i in range(4)]
        _write_pickle(folder / f"data_batch_{b + 1}", _fake_images(labels, b), labels, b"labels")
    test_labels = [(3 * i) % 10 for i in range(20)]
    test_images = _fake_images(test_labels, 99)
    _write_pickle(folder / "test_batch", test_images, test_labels, b"labels")
    return test_images, test_labels


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _write_shards(folder: Path) -> None:
    """WebDataset layout: 5 train shards of 2 samples and 1 test shard of 4; colour encodes the label."""
    folder.mkdir(parents=True, exist_ok=True)

    def shard(path: Path, start: int, n: int, split: str) -> None:
        with tarfile.open(path, "w:gz") as tf:
            for r in range(start, start + n):
                key = f"{split}_{r:06d}"
                _add(tf, f"{key}.jpg", _jpeg((20 * (r % 10) + 10, 100, 200)))
                _add(tf, f"{key}.cls", str(r % 10).encode())

    for k in range(5):
        shard(folder / f"cifar10-train-{k:06d}.tar.gz", 2 * k, 2, "train")
    shard(folder / "cifar10-test-000000.tar.gz", 0, 4, "test")


# ----------------------------------------------------------------------------------------------
# digits / synthetic
# ----------------------------------------------------------------------------------------------


def test_digits_shapes_and_fixed_split():
    tr = load_dataset("digits", "train")
    te = load_dataset("digits", "test")
    assert DATASETS == ("digits", "synthetic", "cifar10", "cifar100", "svhn")
    assert tr.images.shape == (1437, 1, 8, 8) and te.images.shape == (360, 1, 8, 8)
    assert tr.images.dtype == torch.uint8 and tr.labels.dtype == torch.int64
    assert tr.images.is_contiguous()
    assert (tr.num_classes, tr.channels, tr.resolution, len(tr), tr.pad, tr.flip) == (10, 1, 8, 1437, 1, False)
    assert set(tr.labels.tolist()) == set(range(10)) and set(te.labels.tolist()) == set(range(10))
    assert int(tr.images.max()) == 255 and int(tr.images.min()) == 0
    # mean/std are the train images' own statistics
    x = tr.images.double() / 255
    assert tr.mean[0] == pytest.approx(float(x.mean()), abs=1e-9)
    assert tr.std[0] == pytest.approx(float(x.std(unbiased=False)), abs=1e-9)
    assert te.mean == tr.mean
    # the seed only reorders train; the test split does not depend on it
    tr2 = load_dataset("digits", "train", seed=5)
    te2 = load_dataset("digits", "test", seed=5)
    assert torch.equal(te.images, te2.images)
    assert not torch.equal(tr.labels, tr2.labels)
    assert sorted(tr.labels.tolist()) == sorted(tr2.labels.tolist())


def test_synthetic_deterministic_and_learnable():
    tr = load_dataset("synthetic", "train")
    te = load_dataset("synthetic", "test")
    assert tr.images.shape == (640, 3, 8, 8) and te.images.shape == (160, 3, 8, 8)
    assert (tr.pad, tr.flip, tr.num_classes) == (0, False, 10)
    assert torch.bincount(tr.labels).tolist() == [64] * 10
    assert torch.equal(load_dataset("synthetic", "train").images, tr.images)
    # class means differ clearly, and nearest-class-mean classifies the test split
    x = tr.images.double().flatten(1)
    centers = torch.stack([x[tr.labels == k].mean(0) for k in range(10)])
    d = torch.cdist(centers, centers)
    assert float(d[~torch.eye(10, dtype=torch.bool)].min()) > 50
    pred = torch.cdist(te.images.double().flatten(1), centers).argmin(1)
    assert float((pred == te.labels).double().mean()) > 0.95
    big = load_dataset("synthetic", "test", resolution=16)
    assert big.images.shape == (160, 3, 16, 16)


# ----------------------------------------------------------------------------------------------
# subset / resolution / bad values
# ----------------------------------------------------------------------------------------------


def test_subset_balanced_and_seeded():
    a = load_dataset("synthetic", subset=25, seed=1)
    b = load_dataset("synthetic", subset=25, seed=1)
    c = load_dataset("synthetic", subset=25, seed=2)
    counts = torch.bincount(a.labels, minlength=10)
    assert len(a) == 25 and int(counts.min()) == 2 and int(counts.max()) == 3
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    exact = load_dataset("digits", subset=100, seed=0)
    assert torch.bincount(exact.labels).tolist() == [10] * 10
    assert len(load_dataset("synthetic", "test", subset=20)) == 20


def test_balanced_quotas_water_filling():
    g = torch.Generator().manual_seed(0)
    # class 0 has only 1 sample: the rest is shared equally among the others
    assert balanced_quotas([1, 10, 10], 9, g) == [1, 4, 4]
    q = balanced_quotas([5, 5, 5], 10, g)
    assert sum(q) == 10 and sorted(q) == [3, 3, 4]
    assert balanced_quotas([2, 3], 5, g) == [2, 3]


def test_resolution_resizes():
    small = load_dataset("digits", "test")
    d = load_dataset("digits", "test", resolution=16)
    assert d.images.shape == (360, 1, 16, 16) and d.images.dtype == torch.uint8
    assert d.resolution == 16 and torch.equal(d.labels, small.labels)
    ref = F.interpolate(small.images.float(), size=(16, 16), mode="bilinear", antialias=True).round().clamp(0, 255)
    assert torch.equal(d.images, ref.to(torch.uint8))
    # a constant image stays constant, also when shrinking
    flat = torch.full((2, 3, 12, 12), 77, dtype=torch.uint8)
    assert torch.equal(resize_images(flat, 5), torch.full((2, 3, 5, 5), 77, dtype=torch.uint8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="mnist"), "unknown dataset"),
        (dict(name="digits", split="valid"), "unknown split"),
        (dict(name="digits", resolution=3), "resolution"),
        (dict(name="digits", subset=9), "smaller than the number of classes"),
        (dict(name="digits", subset=1438), "larger than the split"),
        (dict(name="cifar10"), "DNAS_DATA_DIR"),
    ],
)
def test_bad_values(kwargs, match):
    with pytest.raises(DnasError, match=match):
        load_dataset(**kwargs)


def test_split_indices():
    a, b = split_indices(10, 0.5)
    assert a.tolist() == [0, 1, 2, 3, 4] and b.tolist() == [5, 6, 7, 8, 9]
    assert a.dtype == torch.int64
    assert len(split_indices(100, 0.29)[0]) == 29
    assert len(split_indices(7, 0.5)[0]) == 3
    with pytest.raises(DnasError):
        split_indices(10, 1.5)


# ----------------------------------------------------------------------------------------------
# BatchLoader
# ----------------------------------------------------------------------------------------------


def _indexed_dataset(n: int, pad: int = 0, flip: bool = False) -> ImageDataset:
    """1-channel 4x4 images whose first two pixels encode the sample index; mean 0, std 1."""
    x = torch.zeros((n, 1, 4, 4), dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n) % 256
    x[:, 0, 0, 1] = torch.arange(n) // 256
    return ImageDataset("idx", x, torch.arange(n) % 3, 3, (0.0,), (1.0,), pad, flip)


def _ids(x: torch.Tensor) -> list[int]:
    v = (x * 255).round().long()
    return (v[:, 0, 0, 0] + 256 * v[:, 0, 0, 1]).tolist()


def test_loader_deterministic_and_epochs_differ():
    ds = load_dataset("synthetic", "train")
    a = list(BatchLoader(ds, None, 64, augment=True, seed=3).epoch(2))
    b = list(BatchLoader(ds, None, 64, augment=True, seed=3).epoch(2))
    c = list(BatchLoader(ds, None, 64, augment=True, seed=3).epoch(3))
    d = list(BatchLoader(ds, None, 64, augment=True, seed=3, stream=1).epoch(2))
    assert len(a) == 10
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1]) and not torch.equal(a[0][1], d[0][1])
    x, y = a[0]
    assert x.shape == (64, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    # normalised: roughly zero mean, unit std per channel
    allx = torch.cat([x for x, _ in a])
    assert allx.mean((0, 2, 3)).abs().max() < 0.05 and (allx.std((0, 2, 3)) - 1).abs().max() < 0.05
    # cycle resumes exactly where epoch() would
    it = BatchLoader(ds, None, 64, augment=True, seed=3).cycle(start_epoch=2)
    got = [next(it) for _ in range(11)]
    assert torch.equal(got[3][0], a[3][0]) and torch.equal(got[10][1], c[0][1])


def test_loader_len_order_and_values():
    ds = _indexed_dataset(10)
    idx = torch.tensor([9, 7, 5, 3, 1])
    plain = BatchLoader(ds, idx, 2, augment=False, shuffle=False)
    assert len(plain) == 3
    batches = list(plain.epoch(0))
    assert [_ids(x) for x, _ in batches] == [[9, 7], [5, 3], [1]]
    assert batches[0][1].tolist() == [0, 1]  # labels i % 3 of samples 9 and 7
    dl = BatchLoader(ds, idx, 2, augment=False, drop_last=True)
    assert len(dl) == 2 and sum(len(y) for _, y in dl.epoch(0)) == 4
    shuffled = [i for x, _ in BatchLoader(ds, idx, 2, augment=False, seed=1).epoch(0) for i in _ids(x)]
    assert sorted(shuffled) == [1, 3, 5, 7, 9]
    with pytest.raises(DnasError):
        BatchLoader(ds, idx, 8, augment=False, drop_last=True)
    with pytest.raises(DnasError):
        BatchLoader(ds, torch.tensor([10]), 2, augment=False)
    cl = next(BatchLoader(load_dataset("synthetic", "test"), None, 4, augment=False, channels_last=True).epoch(0))[0]
    assert cl.is_contiguous(memory_format=torch.channels_last)


def test_loader_world_size_disjoint_cover():
    ds = _indexed_dataset(600)
    idx = torch.arange(101)  # odd: one sample is repeated as padding
    loaders = [BatchLoader(ds, idx, 16, augment=False, seed=4, rank=r, world_size=2) for r in range(2)]
    assert len(loaders[0]) == len(loaders[1]) == 4  # 51 samples per rank
    shares = [[i for x, _ in ld.epoch(1) for i in _ids(x)] for ld in loaders]
    assert len(shares[0]) == len(shares[1]) == 51
    assert set(shares[0]) | set(shares[1]) == set(range(101))
    assert len(set(shares[0]) & set(shares[1])) <= 1
    even = [set(i for x, _ in BatchLoader(ds, torch.arange(100), 16, augment=False, rank=r, world_size=2).epoch(0) for i in _ids(x)) for r in range(2)]
    assert not (even[0] & even[1]) and len(even[0] | even[1]) == 100


def test_loader_crop_and_flip_applied():
    h = w = 6
    pad = 2
    pix = (torch.arange(h * w) + 1).view(1, 1, h, w).to(torch.uint8)  # all non-zero, all distinct
    ds = ImageDataset("pos", pix.repeat(64, 1, 1, 1).contiguous(), torch.zeros(64, dtype=torch.int64), 1, (0.0,), (1.0,), pad, True)
    (x, _), = list(BatchLoader(ds, None, 64, augment=True, seed=0).epoch(0))
    assert x.shape == (64, 1, h, w)
    got = (x * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(pix[0, 0], (pad, pad, pad, pad))
    seen = set()
    for img in got[:, 0]:
        match = None
        for oy in range(2 * pad + 1):
            for ox in range(2 * pad + 1):
                crop = padded[oy : oy + h, ox : ox + w]
                for fl in (False, True):
                    if torch.equal(img, crop.flip(1) if fl else crop):
                        match = (oy, ox, fl)
        assert match is not None, "every output must be a padded crop, maybe flipped"
        seen.add(match)
    assert len({m[:2] for m in seen}) > 5 and {m[2] for m in seen} == {False, True}
    # without augment the images come back untouched
    (x0, _), = list(BatchLoader(ds, None, 64, augment=False).epoch(0))
    assert torch.equal((x0 * 255).round().to(torch.uint8), ds.images)


# ----------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------


def test_cifar10_python_folder(tmp_path, monkeypatch):
    test_images, test_labels = _write_python_cifar10(tmp_path)
    te = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert te.images.shape == (20, 3, 32, 32) and te.labels.tolist() == test_labels
    assert torch.equal(te.images, torch.from_numpy(test_images))
    assert (te.pad, te.flip, te.num_classes, te.mean) == (4, True, 10, (0.4914, 0.4822, 0.4465))
    tr = load_dataset("cifar10", "train", data_dir=tmp_path)
    assert tr.images.shape == (20, 3, 32, 32)
    assert sorted(tr.labels.tolist()) == sorted([i % 10 for i in range(20)])
    assert torch.equal(tr.images[:, 0, 0, 0].long(), 20 * tr.labels + 10)  # images keep their labels through the shuffle
    # DNAS_DATA_DIR is used when data_dir is not given; the python folder itself is accepted too
    monkeypatch.setenv("DNAS_DATA_DIR", str(tmp_path))
    assert len(load_dataset("cifar10", "test")) == 20
    assert len(load_dataset("cifar10", "test", data_dir=tmp_path / "cifar-10-batches-py")) == 20


def test_cifar100_python_folder(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    labels = [7 * i % 100 for i in range(12)]
    _write_pickle(folder / "train", _fake_images([0] * 12, 1), labels, b"fine_labels")
    _write_pickle(folder / "test", _fake_images([0] * 12, 2), labels, b"fine_labels")
    tr = load_dataset("cifar100", "train", data_dir=tmp_path)
    assert tr.num_classes == 100 and tr.std == (0.2673, 0.2564, 0.2762)
    assert sorted(tr.labels.tolist()) == sorted(labels)


def test_cifar10_shards_and_cache(tmp_path, monkeypatch):
    _write_shards(tmp_path / "data")
    tr = load_dataset("cifar10", "train", data_dir=tmp_path / "data")
    assert tr.images.shape == (10, 3, 32, 32)
    assert sorted(tr.labels.tolist()) == list(range(10))
    # JPEG is lossy: the flat colours come back within a few levels
    assert (tr.images[:, 0, 16, 16].long() - (20 * tr.labels + 10)).abs().max() <= 3
    assert (tr.images[:, 2].float().mean((1, 2)) - 200).abs().max() <= 3
    te = load_dataset("cifar10", "test", data_dir=tmp_path / "data")
    assert te.labels.tolist() == [0, 1, 2, 3]  # test keeps the stored order

    caches = sorted((tmp_path / "cache").glob("cifar10-*.pt"))
    assert len(caches) == 2
    # a cache hit must not decode again and must give identical arrays
    def boom(*a, **k):
        raise AssertionError("decoded despite a valid cache")

    real_read_shard = cifar_mod.read_shard
    monkeypatch.setattr(cifar_mod, "read_shard", boom)
    te2 = load_dataset("cifar10", "test", data_dir=tmp_path / "data")
    assert torch.equal(te.images, te2.images) and torch.equal(te.labels, te2.labels)
    monkeypatch.setattr(cifar_mod, "read_shard", real_read_shard)
    # a corrupt cache file is ignored and rebuilt
    test_cache = [p for p in caches if "-test-" in p.name][0]
    test_cache.write_bytes(b"garbage")
    te3 = load_dataset("cifar10", "test", data_dir=tmp_path / "data")
    assert torch.equal(te.images, te3.images)
    assert test_cache.stat().st_size > 1000


def test_cifar10_nested_shard_folder(tmp_path):
    """DIR/cifar10/ holding the shards is accepted."""
    _write_shards(tmp_path / "cifar10")
    assert load_dataset("cifar10", "test", data_dir=tmp_path).labels.tolist() == [0, 1, 2, 3]


def _one_line_error(fn) -> str:
    with pytest.raises(DnasError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_cifar_errors(tmp_path):
    msg = _one_line_error(lambda: load_dataset("cifar10", data_dir=tmp_path / "nope"))
    assert "does not exist" in msg
    (tmp_path / "empty").mkdir()
    msg = _one_line_error(lambda: load_dataset("cifar10", data_dir=tmp_path / "empty"))
    assert "no data found" in msg and "cifar-10-batches-py" in msg and "cifar10-train-000000.tar.gz" in msg
    # a truncated shard
    data = tmp_path / "data"
    _write_shards(data)
    shard = data / "cifar10-test-000000.tar.gz"
    raw = shard.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 6):  # the second keeps every sample but loses the gzip trailer
        shard.write_bytes(raw[:cut])
        assert "corrupt shard" in _one_line_error(lambda: load_dataset("cifar10", "test", data_dir=data))
    shard.write_bytes(b"not a gzip file at all")
    assert "corrupt shard" in _one_line_error(lambda: load_dataset("cifar10", "test", data_dir=data))
    (data / "cifar10-train-000003.tar.gz").unlink()
    assert "cifar10-train-000003.tar.gz" in _one_line_error(lambda: load_dataset("cifar10", "train", data_dir=data))
    # a truncated pickle and a missing batch
    py = tmp_path / "py"
    _write_python_cifar10(py)
    batch = py / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:100])
    assert "cannot read" in _one_line_error(lambda: load_dataset("cifar10", "test", data_dir=py))
    (py / "cifar-10-batches-py" / "data_batch_2").unlink()
    assert "data_batch_2" in _one_line_error(lambda: load_dataset("cifar10", "train", data_dir=py))



def test_shard_with_garbled_inner_header_is_corrupt(tmp_path):
    """A tar garbled or cut before gzip (so the gzip CRC holds) must not silently drop the later samples."""
    import gzip

    data = tmp_path / "data"
    _write_shards(data)
    shard = data / "cifar10-test-000000.tar.gz"
    raw = bytearray(gzip.decompress(shard.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tf:
        third = [m.offset for m in tf][2]  # the header of test_000001.jpg
    garbled = bytearray(raw)
    garbled[third + 100] ^= 0xFF  # its mode field: the header checksum no longer matches
    shard.write_bytes(gzip.compress(bytes(garbled)))
    assert "corrupt shard" in _one_line_error(lambda: load_dataset("cifar10", "test", data_dir=data))
    shard.write_bytes(gzip.compress(bytes(raw[:third])))  # a tar cut at a member boundary, then gzipped
    assert "corrupt shard" in _one_line_error(lambda: load_dataset("cifar10", "test", data_dir=data))
    shard.write_bytes(gzip.compress(bytes(raw)))  # the intact archive still reads
    assert load_dataset("cifar10", "test", data_dir=data).labels.tolist() == [0, 1, 2, 3]


def _relabel_test_shard(data: Path, label: bytes) -> None:
    """Rewrite the test shard with its first sample's .cls set to `label` (one digit), as a stored (level 0)
    gzip with a fixed header time: every such rewrite has the same size, only the bytes differ."""
    import gzip

    shard = data / "cifar10-test-000000.tar.gz"
    raw = bytearray(gzip.decompress(shard.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tf:
        cls = next(m for m in tf if m.name.endswith(".cls"))
    assert cls.size == 1
    raw[cls.offset_data] = label[0]
    shard.write_bytes(gzip.compress(bytes(raw), compresslevel=0, mtime=0))


def _count_decodes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = cifar_mod.read_shard

    def counting(name, path):
        calls.append(path.name)
        return real(name, path)

    monkeypatch.setattr(cifar_mod, "read_shard", counting)
    return calls


def test_cifar_cache_keyed_by_content_not_mtime(tmp_path, monkeypatch):
    """New mtimes alone (a re-copied shared folder) reuse the cache; new bytes of the same size under the old
    mtime rebuild it; each rebuild replaces the folder's superseded entry instead of adding one."""
    import os

    data, cache = tmp_path / "data", tmp_path / "cache"
    _write_shards(data)
    _relabel_test_shard(data, b"0")
    decodes = _count_decodes(monkeypatch)
    assert load_dataset("cifar10", "test", data_dir=data).labels.tolist() == [0, 1, 2, 3]
    assert len(load_dataset("cifar10", "train", data_dir=data)) == 10
    assert len(decodes) == 6
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2
    # every shard touched: no decode, no new entry
    for p in data.iterdir():
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**12))
    assert load_dataset("cifar10", "test", data_dir=data).labels.tolist() == [0, 1, 2, 3]
    assert len(load_dataset("cifar10", "train", data_dir=data)) == 10
    assert len(decodes) == 6 and sorted(p.name for p in cache.iterdir()) == entries
    # the test shard's bytes changed, same size, mtime set back: the new label is read, the old entry goes
    shard = data / "cifar10-test-000000.tar.gz"
    st = shard.stat()
    _relabel_test_shard(data, b"9")
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert shard.stat().st_size == st.st_size and shard.stat().st_mtime_ns == st.st_mtime_ns
    assert load_dataset("cifar10", "test", data_dir=data).labels.tolist() == [9, 1, 2, 3]
    assert len(decodes) == 7
    now = sorted(p.name for p in cache.iterdir())
    assert len(now) == 2 and [n for n in now if "-train-" in n] == [n for n in entries if "-train-" in n]
    assert [n for n in now if "-test-" in n] != [n for n in entries if "-test-" in n]
    assert load_dataset("cifar10", "test", data_dir=data).labels.tolist() == [9, 1, 2, 3]
    assert len(decodes) == 7


def test_cifar_cache_prunes_version1_entries_only(tmp_path):
    """Version 1's mtime-keyed entries of the split are removed on the next write; other files are kept."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    _write_shards(data)
    cache.mkdir()
    legacy = cache / "cifar10-test-0123456789abcdef.pt"
    kept = [cache / "cifar10-train-0123456789abcdef.pt", cache / "cifar100-test-0123456789abcdef.pt",
            cache / "notes.txt", cache / ".cifar10-test-0123456789abcdef.pt.abc.tmp"]
    for p in [legacy] + kept:
        p.write_bytes(b"x")
    load_dataset("cifar10", "test", data_dir=data)
    assert not legacy.exists() and all(p.exists() for p in kept)
    assert len(list(cache.glob("cifar10-test-*.pt"))) == 1


def test_cifar_cache_two_folders_keep_their_entries(tmp_path, monkeypatch):
    """Two shard folders used in turn each keep their entry (no eviction, no decode after the first)."""
    a, b = tmp_path / "a", tmp_path / "b"
    _write_shards(a)
    _write_shards(b)
    _relabel_test_shard(b, b"7")
    decodes = _count_decodes(monkeypatch)
    for _ in range(2):
        assert load_dataset("cifar10", "test", data_dir=a).labels.tolist() == [0, 1, 2, 3]
        assert load_dataset("cifar10", "test", data_dir=b).labels.tolist() == [7, 1, 2, 3]
    assert len(decodes) == 2 and len(list((tmp_path / "cache").glob("cifar10-test-*.pt"))) == 2


def test_cifar_cache_removed_under_a_reader(tmp_path, monkeypatch):
    """An entry another process removes just before this one loads it is rebuilt, not a crash."""
    data = tmp_path / "data"
    _write_shards(data)
    first = load_dataset("cifar10", "test", data_dir=data)
    (entry,) = (tmp_path / "cache").glob("cifar10-test-*.pt")
    real_load = torch.load

    def load_after_removal(path, *a, **k):
        Path(path).unlink(missing_ok=True)
        return real_load(path, *a, **k)

    monkeypatch.setattr(cifar_mod.torch, "load", load_after_removal)
    again = load_dataset("cifar10", "test", data_dir=data)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    monkeypatch.undo()
    assert entry.stat().st_size > 1000  # written again


def test_cifar_cache_not_written_when_shards_change_while_decoding(tmp_path, monkeypatch):
    """Arrays decoded from bytes that changed after the key was taken are returned but not cached under it."""
    data = tmp_path / "data"
    _write_shards(data)
    _relabel_test_shard(data, b"0")
    real = cifar_mod.read_shard

    def swapped_midway(name, path):
        _relabel_test_shard(data, b"5")
        return real(name, path)

    monkeypatch.setattr(cifar_mod, "read_shard", swapped_midway)
    assert load_dataset("cifar10", "test", data_dir=data).labels.tolist() == [5, 1, 2, 3]
    assert list((tmp_path / "cache").glob("cifar10-test-*.pt")) == []
    monkeypatch.setattr(cifar_mod, "read_shard", real)
    assert load_dataset("cifar10", "test", data_dir=data).labels.tolist() == [5, 1, 2, 3]
    assert len(list((tmp_path / "cache").glob("cifar10-test-*.pt"))) == 1


def test_download_cifar_file_url(tmp_path):
    src = tmp_path / "src"
    _write_python_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    url = archive.as_uri()

    root = tmp_path / "root"
    msg = _one_line_error(lambda: download_cifar("cifar10", root, url=url, md5="0" * 32))
    assert "md5 mismatch" in msg
    assert not (root / "cifar-10-batches-py").exists() and list(root.iterdir()) == []  # no leftovers

    out = download_cifar("cifar10", root, url=url, md5=md5)
    assert out == root / "cifar-10-batches-py" and (out / "test_batch").is_file()
    assert len(load_dataset("cifar10", "test", data_dir=root)) == 20
    assert download_cifar("cifar10", root, url="file:///does/not/exist") == out  # already there: no fetch
    assert "download" in _one_line_error(lambda: download_cifar("cifar10", tmp_path / "r2", url="file:///does/not/exist"))
    with pytest.raises(DnasError):
        download_cifar("cifar7", root)


def test_download_broken_off_is_one_line(tmp_path, monkeypatch):
    """A chunked HTTP response that breaks off raises http.client.IncompleteRead (not an OSError)."""
    import http.client
    import urllib.request

    class Broken:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n=-1):
            raise http.client.IncompleteRead(b"", 10)

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Broken())
    msg = _one_line_error(lambda: download_svhn(tmp_path, ("test",), url="http://mirror.invalid/"))
    assert "download" in msg and "IncompleteRead" in msg
    assert list(tmp_path.iterdir()) == []  # no leftovers


def _write_svhn(folder: Path, split: str, n: int, labels=None) -> np.ndarray:
    """An SVHN file in the official layout: X is H x W x C x N uint8, y is N x 1 with 10 for the digit 0."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(n).integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = np.asarray(labels if labels is not None else [1 + i % 10 for i in range(n)], dtype=np.uint8).reshape(n, 1)
    savemat(str(folder / f"{split}_32x32.mat"), {"X": x, "y": y})
    return x


def test_svhn_official_files(tmp_path):
    x = _write_svhn(tmp_path / "svhn", "test", 12)  # found in root/svhn as well as in root
    _write_svhn(tmp_path / "svhn", "train", 30)
    te = load_dataset("svhn", "test", data_dir=tmp_path)
    assert te.images.shape == (12, 3, 32, 32) and te.images.dtype == torch.uint8
    # Image 5, channel 2, row 7, column 3 is X[7, 3, 2, 5]; label 10 is the digit 0.
    assert int(te.images[5, 2, 7, 3]) == int(x[7, 3, 2, 5])
    assert te.labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert (te.num_classes, te.pad, te.flip) == (10, 4, True)
    assert te.mean == (0.4377, 0.4438, 0.4728) and te.std == (0.1980, 0.2010, 0.1970)
    tr = load_dataset("svhn", "train", data_dir=tmp_path, seed=3)
    assert sorted(tr.labels.tolist()) == sorted(1 + i % 10 if i % 10 != 9 else 0 for i in range(30))
    assert tr.labels.tolist() != sorted(tr.labels.tolist())  # shuffled with the seed
    assert len(load_dataset("svhn", "train", data_dir=tmp_path, subset=10)) == 10


def test_svhn_errors(tmp_path):
    assert "download_svhn" in _one_line_error(lambda: load_dataset("svhn", "test", data_dir=tmp_path))
    _write_svhn(tmp_path, "test", 4, labels=[1, 2, 11, 3])
    assert "outside 1..10" in _one_line_error(lambda: load_dataset("svhn", "test", data_dir=tmp_path))
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage")
    assert "cannot read" in _one_line_error(lambda: load_dataset("svhn", "test", data_dir=tmp_path))


def test_download_svhn_file_url(tmp_path):
    mirror = tmp_path / "mirror"
    _write_svhn(mirror, "test", 6)
    md5 = hashlib.md5((mirror / "test_32x32.mat").read_bytes()).hexdigest()
    root = tmp_path / "root"
    msg = _one_line_error(lambda: download_svhn(root, ("test",), url=mirror.as_uri()))  # the official md5
    assert "md5 mismatch" in msg and list(root.iterdir()) == []  # no leftovers
    assert download_svhn(root, ("test",), url=mirror.as_uri(), md5={"test": md5}) == root
    assert len(load_dataset("svhn", "test", data_dir=root)) == 6
    assert download_svhn(root, ("test",), url="file:///does/not/exist") == root  # already there: no fetch
    assert "download" in _one_line_error(lambda: download_svhn(tmp_path / "r2", ("test",), url="file:///nope"))
    assert "unknown split" in _one_line_error(lambda: download_svhn(root, ("extra",)))


def test_downloaded_files_follow_the_umask(tmp_path):
    """fetch writes through a mkstemp file (mode 0600); the dataset file it leaves must not stay owner-only."""
    from dnas.io import _UMASK

    mirror = tmp_path / "mirror"
    _write_svhn(mirror, "test", 3)
    md5 = hashlib.md5((mirror / "test_32x32.mat").read_bytes()).hexdigest()
    download_svhn(tmp_path / "root", ("test",), url=mirror.as_uri(), md5={"test": md5})
    mode = (tmp_path / "root" / "test_32x32.mat").stat().st_mode & 0o777
    assert mode == 0o666 & ~_UMASK


@pytest.mark.skipif(not REAL_CIFAR.is_dir(), reason="shared CIFAR-10 shards not present")
def test_real_cifar10_test_shard():
    te = load_dataset("cifar10", "test", data_dir=REAL_CIFAR)
    assert te.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(te.labels).tolist() == [1000] * 10
    means = te.images.double().mean((0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.4941, 0.4851, 0.4504], dtype=torch.float64), atol=2e-3)


def test_loader_crop_offsets_cover_the_full_range_and_flip_is_fair():
    """Offsets are uniform on 0..2*pad in both axes (all 25 for pad 2) and about half the samples are flipped."""
    h = w = 6
    pad, n = 2, 1024
    pix = (torch.arange(h * w) + 1).view(1, 1, h, w).to(torch.uint8)
    ds = ImageDataset("pos", pix.repeat(n, 1, 1, 1).contiguous(), torch.zeros(n, dtype=torch.int64), 1, (0.0,), (1.0,), pad, True)
    (x, _), = list(BatchLoader(ds, None, n, augment=True, seed=0).epoch(0))
    got = (x[:, 0] * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(pix[0, 0], (pad, pad, pad, pad))
    keys = [(oy, ox, fl) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1) for fl in (False, True)]
    cands = torch.stack([(padded[oy:oy + h, ox:ox + w].flip(1) if fl else padded[oy:oy + h, ox:ox + w]) for oy, ox, fl in keys])
    hit = (got[:, None] == cands[None]).flatten(2).all(2)  # n x candidates
    assert hit.any(1).all()
    which = [keys[int(j)] for j in hit.float().argmax(1)]
    assert {k[:2] for k in which} == {(oy, ox) for oy in range(5) for ox in range(5)}
    flipped = sum(k[2] for k in which) / n
    assert 0.43 < flipped < 0.57, flipped


def test_loader_normalises_exactly():
    """x = (v / 255 - mean) / std, per channel, computed by hand."""
    v = torch.tensor([0, 51, 255], dtype=torch.uint8)
    imgs = torch.stack([v.view(1, 1, 3).expand(1, 1, 3), v.flip(0).view(1, 1, 3)], dim=1).reshape(1, 2, 1, 3).contiguous()
    ds = ImageDataset("norm", imgs, torch.zeros(1, dtype=torch.int64), 1, (0.5, 0.2), (0.25, 0.4), 0, False)
    (x, _), = list(BatchLoader(ds, None, 1, augment=False).epoch(0))
    assert torch.allclose(x[0, 0, 0], torch.tensor([-2.0, -1.2, 2.0]), atol=1e-6)
    assert torch.allclose(x[0, 1, 0], torch.tensor([2.0, 0.0, -0.5]), atol=1e-6)


def test_loader_cutout_centres_reach_every_row_and_column_and_need_augment():
    """A length-2 hole centred at c covers [c-1, c+1): the last row/column is only hit when c = size-1."""
    n, s = 256, 8
    ds = ImageDataset("white", torch.full((n, 1, s, s), 255, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64), 1,
                      (0.0,), (1.0,), 0, False)
    (x, _), = list(BatchLoader(ds, None, n, augment=True, cutout=2, seed=0).epoch(0))
    holes = x[:, 0] == 0
    assert holes.flatten(1).sum(1).max() == 4 and holes.flatten(1).sum(1).min() >= 1
    assert holes[:, s - 1, :].any() and holes[:, :, s - 1].any() and holes[:, 0, :].any() and holes[:, :, 0].any()
    # Cutout is augmentation: without augment it is off whatever the argument says.
    (x0, _), = list(BatchLoader(ds, None, n, augment=False, cutout=2, seed=0).epoch(0))
    assert (x0 == 1.0).all()


def test_balanced_subset_keeps_the_dataset_order():
    from dnas.data.core import balanced_subset
    # Class 1 is only sample 0; class 0 gets one of 1..3: ascending means 0 comes first.
    for seed in range(5):
        idx = balanced_subset(torch.tensor([1, 0, 0, 0]), 2, 2, seed)
        assert idx[0] == 0 and int(idx[1]) in (1, 2, 3)
    labels = torch.arange(60) % 3
    idx = balanced_subset(labels.flip(0), 31, 3, 7)
    assert idx.tolist() == sorted(set(idx.tolist())) and len(idx) == 31
    assert sorted(torch.bincount(labels.flip(0)[idx]).tolist()) == [10, 10, 11]
