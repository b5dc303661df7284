"""End to end, as CI runs it (< 3 min on 2 cores): synthesise a tiny spoken corpus, fine-tune a
small teacher on it, distil + quantize a student with MCT to 32 and 4 bits, and check accuracy,
file sizes, the reports, quads-eval, and that the service's loader classifies real audio."""

import json
import math

import pytest
import torch
from safetensors import safe_open

from core.audio import decode_audio, log_mel_spectrogram
from core.checkpoint import load_checkpoint
from tests.speech import requires_espeak
from tests.training_corpus import INTENTS, run_cli, tiny_corpus
from training.datasets import load_samples

pytestmark = [requires_espeak, pytest.mark.slow]

COMMON = [
    "--batch-size",
    "4",
    "--threads",
    "1",
    "--no-progress",
    "--set",
    "data.augment=false",
    "--set",
    "distill.lr_encoder=1e-3",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    corpus = tiny_corpus(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("e2e")
    teacher = run_cli(
        "training.train_cli",
        [
            "--data",
            str(corpus),
            "--out",
            str(tmp / "teacher"),
            "--name",
            "teacher",
            "--strategy",
            "finetune",
            "--bits",
            "32",
            "--epochs",
            "14",
            "--set",
            "student.n_state=128",
            "--set",
            "student.n_head=2",
            "--set",
            "student.n_layer=2",
            *COMMON,
        ],
    )
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    mct = run_cli(
        "training.train_cli",
        [
            "--data",
            str(corpus),
            "--out",
            str(tmp / "mct"),
            "--strategy",
            "mct",
            "--bits",
            "32,4",
            "--schedule",
            "DDQQDQ",
            "--teacher",
            str(tmp / "teacher" / "teacher-32bit.safetensors"),
            "--init",
            "teacher-layers",
            "--set",
            "student.n_state=128",
            "--set",
            "student.n_head=2",
            "--set",
            "student.n_layer=1",
            "--set",
            f"teacher.cache_dir={tmp / 'teacher-cache'}",
            *COMMON,
        ],
    )
    assert mct.returncode == 0, mct.stderr[-3000:]
    return corpus, tmp


def test_teacher_and_mct_students_are_well_above_chance(runs):
    _, tmp = runs
    teacher = json.loads((tmp / "teacher" / "report.json").read_text())
    assert teacher["results"][0]["accuracy"] >= 0.6  # 4 intents: chance is 0.25
    report = json.loads((tmp / "mct" / "report.json").read_text())
    by_bits = {r["bits"]: r for r in report["results"]}
    assert set(by_bits) == {32, 4}
    for bits, row in by_bits.items():
        assert row["split"] == "test" and row["n"] == 24
        assert row["accuracy"] >= 0.6, f"{bits}-bit accuracy {row['accuracy']}"
        assert row["macro_f1"] >= 0.5
    # Every epoch of the plan ran once: 2 shared D, then QQDQ for each of the two branches.
    assert [(h["branch"], h["phase"]) for h in report["history"]] == (
        [("shared", "D")] * 2 + [("float", p) for p in "FFDF"] + [("4bit", p) for p in "QQDQ"]
    )


def test_the_4_bit_file_is_about_an_eighth_of_fp32(runs):
    _, tmp = runs
    fp32, q4 = tmp / "mct" / "quads-fsc-32bit.safetensors", tmp / "mct" / "quads-fsc-4bit.safetensors"
    with safe_open(str(fp32), framework="pt") as f32, safe_open(str(q4), framework="pt") as f4:
        names = [k.removesuffix(".codes") for k in f4.keys() if k.endswith(".codes")]
        assert names, "no quantized tensors in the 4-bit file"
        fp32_bytes = sum(f32.get_tensor(n).numel() * 4 for n in names)
        code_bytes = sum(f4.get_tensor(f"{n}.codes").numel() for n in names)
        codebook_bytes = sum(f4.get_tensor(f"{n}.codebook").numel() * 4 for n in names)
    # The quantized matrices themselves: exactly 4/32 of their float32 bytes (up to byte rounding).
    assert code_bytes == pytest.approx(fp32_bytes / 8, rel=1e-3)
    assert codebook_bytes == 16 * 4 * len(names)
    # The whole file also carries float32 biases/LayerNorms and metadata, a larger share on a
    # tiny model than on whisper-base (where it is ~1/8): bound it rather than equate it.
    ratio = q4.stat().st_size / fp32.stat().st_size
    assert ratio < 0.2, f"4-bit file is {ratio:.3f} of the fp32 file"


def test_qad_quantizes_after_distillation_without_retraining(runs):
    corpus, tmp = runs
    out = tmp / "qad"
    qad = run_cli(
        "training.train_cli",
        [
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--strategy",
            "qad",
            "--bits",
            "32,16,2",
            "--schedule",
            "DD",
            "--teacher",
            str(tmp / "teacher" / "teacher-32bit.safetensors"),
            "--set",
            "student.n_state=128",
            "--set",
            "student.n_head=2",
            "--set",
            "student.n_layer=1",
            "--init",
            "teacher-layers",
            "--set",
            f"teacher.cache_dir={tmp / 'teacher-cache'}",
            *COMMON,
        ],
    )
    assert qad.returncode == 0, qad.stderr[-3000:]
    assert "read from" in qad.stderr  # the MCT run's cached teacher embeddings, reused
    fp32, fp16, q2 = (load_checkpoint(out / f"quads-fsc-{b}bit.safetensors") for b in (32, 16, 2))
    assert q2.provenance["quantization"] == "post-hoc k-means" and fp32.provenance["quantization"] == "trained"
    for (_, w32), (_, w16), (_, w2) in zip(*(c.model.state_dict().items() for c in (fp32, fp16, q2))):
        torch.testing.assert_close(w16, w32, atol=1e-3, rtol=1e-3)  # the float16 export of the same model
        if w32.dim() > 1:
            assert torch.unique(w2).numel() <= 4
    assert fp16.file_bytes < 0.6 * fp32.file_bytes
    history = json.loads((out / "report.json").read_text())["history"]
    assert [(h["branch"], h["phase"]) for h in history] == [("float", "D"), ("float", "D")]


def test_reports_and_charts_are_written(runs):
    _, tmp = runs
    for name in ("report.json", "report.md", "bubbles.png", "curves.png", "config.yaml", "train.log"):
        assert (tmp / "mct" / name).is_file(), name
    md = (tmp / "mct" / "report.md").read_text()
    assert "| mct | teacher-layers | 4 |" in md and "| mct | teacher-layers | 32 |" in md


def test_quads_eval_prints_metrics_and_writes_a_confusion_report(runs):
    corpus, tmp = runs
    ckpt = tmp / "mct" / "quads-fsc-4bit.safetensors"
    out = run_cli(
        "training.eval_cli",
        [
            "--model",
            str(ckpt),
            "--data",
            str(corpus),
            "--split",
            "test",
            "--confusion",
            str(tmp / "confusion.json"),
            "--no-progress",
        ],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    for key in ("accuracy", "macro_f1", "n", "params", "file_bytes", "bits", "gmacs_per_clip", "gmacs_30s"):
        assert key in result, key
    report = json.loads((tmp / "mct" / "report.json").read_text())
    row = next(r for r in report["results"] if r["bits"] == 4)
    assert result["bits"] == 4 and result["n"] == 24 and result["file_bytes"] == ckpt.stat().st_size
    assert result["accuracy"] == pytest.approx(row["accuracy"])
    assert 0 < result["gmacs_per_clip"] < result["gmacs_30s"]  # real-length clips are far below 30 s
    confusion = json.loads((tmp / "confusion.json").read_text())
    matrix = confusion["confusion"]
    assert len(matrix) == 4 and sum(map(sum, matrix)) == 24
    assert sum(matrix[i][i] for i in range(4)) == round(result["accuracy"] * 24)


def test_the_service_loader_classifies_real_audio(runs):
    corpus, tmp = runs
    ckpt = load_checkpoint(tmp / "mct" / "quads-fsc-4bit.safetensors")
    assert ckpt.bits == 4 and sorted(ckpt.labels) == sorted(INTENTS)
    for p in ckpt.model.parameters():
        if p.dim() > 1:
            assert torch.unique(p).numel() <= 16
    samples = load_samples(corpus, "test")
    correct = 0
    with torch.no_grad():
        for sample in samples:
            mel = log_mel_spectrogram(decode_audio(sample.path.read_bytes()), ckpt.dims.n_mels)
            _, logits = ckpt.model(mel[None])
            correct += ckpt.labels[int(logits.argmax())] == sample.label
    assert correct / len(samples) >= 0.6
    row = next(r for r in json.loads((tmp / "mct" / "report.json").read_text())["results"] if r["bits"] == 4)
    assert math.isclose(correct / len(samples), row["accuracy"])


def test_bad_samples_are_reported_with_their_path_and_skipped_or_fail_fast(tmp_path_factory, capsys):
    from training.train_cli import cli

    corpus = tiny_corpus(tmp_path_factory)
    data = tmp_path_factory.mktemp("bad-data")
    good = load_samples(corpus, "train")[:8]
    (data / "notaudio.wav").write_text("this is not audio")
    rows = [f"{s.path},{s.label}" for s in good] + [
        f"{data / 'missing.wav'},{good[0].label}",
        f"{data / 'notaudio.wav'},{good[1].label}",
    ]
    (data / "train.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    held_out = [f"{s.path},{s.label}" for s in load_samples(corpus, "valid")[:4]] + [f"{good[2].path},no_such_intent"]
    for split in ("valid", "test"):
        (data / f"{split}.csv").write_text("path,label\n" + "\n".join(held_out) + "\n")
    args = [
        "--data",
        str(data),
        "--strategy",
        "finetune",
        "--bits",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--no-progress",
        "--set",
        "data.augment=false",
        "--set",
        "student.n_state=32",
        "--set",
        "student.n_head=2",
        "--set",
        "student.n_layer=1",
    ]
    assert cli([*args, "--out", str(tmp_path_factory.mktemp("skip"))]) == 0
    out = capsys.readouterr().err
    for path in ("missing.wav", "notaudio.wav"):
        assert path in out
    report = json.loads(next(tmp_path_factory.getbasetemp().glob("skip*/report.json")).read_text())
    assert report["run"]["n_train"] == 8 and len(report["run"]["skipped_train"]) == 2
    assert report["results"][0]["n"] == 4  # the held-out clip with an unknown label is left out
    assert "no_such_intent" in out

    assert cli([*args, "--out", str(tmp_path_factory.mktemp("raise")), "--set", "data.on_error=raise"]) == 2
    err = capsys.readouterr().err
    assert "quads-train: error:" in err and "missing.wav" in err


@pytest.mark.parametrize("labels, fits", [("refit", 2), ("fixed", 1)])
def test_eq_4_centroids_with_fixed_or_refitted_assignments(tmp_path_factory, monkeypatch, labels, fits):
    """MCT under eq. 4, schedule DQDQ: the 4-bit branch has two Q phases; with fixed assignments
    k-means runs once and the second phase reuses it, with refit it runs at both. The file holds
    the quantizer's own codebooks."""
    from tests.training_corpus import random_teacher, tiny_student_args
    from training.quantize import KMeansQuantizer
    from training.train_cli import cli

    calls = {"fit": 0, "reuse": 0}
    for name in calls:
        original = getattr(KMeansQuantizer, name)
        monkeypatch.setattr(
            KMeansQuantizer,
            name,
            lambda self, *a, _o=original, _n=name: calls.update({_n: calls[_n] + 1}) or _o(self, *a),
        )
    tmp = tmp_path_factory.mktemp(f"eq4-{labels}")
    args = [
        "--data",
        str(tiny_corpus(tmp_path_factory)),
        "--out",
        str(tmp / "run"),
        "--strategy",
        "mct",
        "--bits",
        "4",
        "--schedule",
        "DQDQ",
        "--teacher",
        str(random_teacher(tmp / "teacher.safetensors")),
        "--set",
        f"teacher.cache_dir={tmp / 'cache'}",
        "--set",
        "quant.centroid_update=sum",
        "--set",
        f"quant.labels={labels}",
        *COMMON,
        *tiny_student_args(64, 1),
    ]
    assert cli(args) == 0
    assert calls == {"fit": fits, "reuse": 2 - fits}
    checkpoint = load_checkpoint(tmp / "run" / "quads-fsc-4bit.safetensors")
    assert checkpoint.provenance["strategy"] == "mct" and checkpoint.bits == 4
    config = (tmp / "run" / "config.yaml").read_text()
    assert "centroid_update: sum" in config and f"labels: {labels}" in config


def test_post_training_quantization_of_the_float_branch_is_reported_beside_the_trained_widths(tmp_path_factory):
    from tests.training_corpus import random_teacher, tiny_student_args
    from training.train_cli import cli

    tmp = tmp_path_factory.mktemp("ptq")
    args = [
        "--data",
        str(tiny_corpus(tmp_path_factory)),
        "--out",
        str(tmp / "run"),
        "--strategy",
        "mct",
        "--bits",
        "32,4",
        "--schedule",
        "DQ",
        "--teacher",
        str(random_teacher(tmp / "teacher.safetensors")),
        "--set",
        f"teacher.cache_dir={tmp / 'cache'}",
        "--set",
        "train.post_hoc_bits=[4, 2]",
        *COMMON,
        *tiny_student_args(64, 1),
    ]
    assert cli(args) == 0
    rows = {
        (r["branch"], r["quantization"], r["bits"]): r
        for r in json.loads((tmp / "run" / "report.json").read_text())["results"]
    }
    assert set(rows) == {
        ("float", "trained", 32),
        ("4bit", "trained", 4),
        ("float", "post-hoc k-means", 4),
        ("float", "post-hoc k-means", 2),
    }
    assert rows[("float", "post-hoc k-means", 2)]["checkpoint"].endswith("quads-fsc-ptq-2bit.safetensors")
    for row in rows.values():  # per test voice: clips right and clips, adding up to the split
        assert sum(total for _, total in row["per_speaker"].values()) == row["n"] == 24
        assert sum(right for right, _ in row["per_speaker"].values()) == round(row["accuracy"] * row["n"])


def test_a_quads_teacher_over_the_same_labels_gives_the_student_its_head_and_logits(runs, capsys):
    from training.train_cli import cli

    corpus, tmp = runs
    args = [
        "--data",
        str(corpus),
        "--strategy",
        "distill",
        "--bits",
        "32",
        "--schedule",
        "D",
        "--teacher",
        str(tmp / "teacher" / "teacher-32bit.safetensors"),
        "--init",
        "teacher-layers",
        "--set",
        "student.n_state=128",
        "--set",
        "student.n_head=2",
        "--set",
        "student.n_layer=1",
        "--set",
        f"teacher.cache_dir={tmp / 'teacher-cache'}",
        "--set",
        "distill.kl_weight=0.5",
        *COMMON,
    ]
    assert cli([*args, "--out", str(tmp / "kl")]) == 0
    assert "student head: the teacher's head" in capsys.readouterr().err
    (epoch,) = json.loads((tmp / "kl" / "report.json").read_text())["history"]
    assert epoch["kl"] > 0 and epoch["loss"] == pytest.approx(
        0.5 * epoch["l1"] + 0.5 * epoch["ce"] + 0.5 * epoch["kl"], rel=1e-6
    )


def test_logit_distillation_from_a_teacher_without_the_labels_is_refused(tmp_path_factory, capsys):
    from tests.training_corpus import random_teacher, tiny_student_args
    from training.train_cli import cli

    tmp = tmp_path_factory.mktemp("kl-refused")
    args = [
        "--data",
        str(tiny_corpus(tmp_path_factory)),
        "--out",
        str(tmp / "run"),
        "--strategy",
        "distill",
        "--bits",
        "32",
        "--schedule",
        "D",
        "--teacher",
        str(random_teacher(tmp / "teacher.safetensors")),
        "--set",
        "distill.kl_weight=0.5",
        *COMMON,
        *tiny_student_args(64, 1),
    ]
    assert cli(args) == 2
    assert "distill.kl_weight needs the teacher's logits over the student's labels" in capsys.readouterr().err


def test_straight_through_with_sensitivity_codebooks_trains_and_exports(tmp_path_factory, monkeypatch):
    """quant.method=ste with quant.codebook_fit=sensitivity through the CLI: the k-means of each Q
    phase is weighted by squared gradients of calibration batches, and the 3-bit file keeps at most
    8 values per matrix."""
    from tests.training_corpus import random_teacher, tiny_student_args
    from training.quantize import KMeansQuantizer
    from training.train_cli import cli

    weighted = []
    original = KMeansQuantizer.fit
    monkeypatch.setattr(
        KMeansQuantizer, "fit", lambda self, imp=None: weighted.append(imp is not None) or original(self, imp)
    )
    tmp = tmp_path_factory.mktemp("ste")
    args = [
        *("--data", str(tiny_corpus(tmp_path_factory)), "--out", str(tmp / "run"), "--strategy", "mct"),
        *("--bits", "3", "--schedule", "DQ", "--teacher", str(random_teacher(tmp / "teacher.safetensors"))),
        *("--set", f"teacher.cache_dir={tmp / 'cache'}", "--set", "quant.method=ste"),
        *("--set", "quant.codebook_fit=sensitivity", "--set", "quant.calibration_batches=2"),
        *COMMON,
        *tiny_student_args(64, 1),
    ]
    assert cli(args) == 0
    assert weighted == [True]
    checkpoint = load_checkpoint(tmp / "run" / "quads-fsc-3bit.safetensors")
    assert checkpoint.bits == 3
    for name, p in checkpoint.model.named_parameters():
        if p.dim() > 1:
            assert p.unique().numel() <= 8, name
    config = (tmp / "run" / "config.yaml").read_text()
    assert "method: ste" in config and "codebook_fit: sensitivity" in config
