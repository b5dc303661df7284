"""The student's initialisation (random, Whisper, teacher layers) and the teacher with its cache."""

import pytest
import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.model import AudioEncoder, IntentClassifier, ModelDims
from tests.training_corpus import write_openai_checkpoint
from training.config import StudentConfig
from training.losses import ChannelMaxPool, StudentProjection
from training.student import (
    StudentInitError,
    copy_teacher_head,
    init_student,
    student_dims,
    teacher_layer_indices,
)
from training.teacher import TeacherCache, load_teacher

SMALL = ModelDims(n_mels=16, n_ctx=64, n_state=32, n_head=2, n_layer=1)


def test_teacher_layers_copies_evenly_spaced_blocks():
    assert teacher_layer_indices(32, 4) == [0, 10, 21, 31]
    assert teacher_layer_indices(6, 2) == [0, 5]
    torch.manual_seed(0)
    teacher = AudioEncoder(ModelDims(n_mels=16, n_ctx=64, n_state=32, n_head=2, n_layer=5))
    cfg = StudentConfig(init="teacher-layers", n_state=32, n_head=2, n_layer=3)
    student = init_student(cfg, student_dims(cfg, 16), 4, teacher_encoder=teacher)
    for i, j in enumerate([0, 2, 4]):
        for (name, s), (_, t) in zip(
            student.encoder.blocks[i].state_dict().items(), teacher.blocks[j].state_dict().items()
        ):
            assert torch.equal(s, t), name
    assert torch.equal(student.encoder.conv1.weight, teacher.conv1.weight)
    assert torch.equal(student.encoder.ln_post.weight, teacher.ln_post.weight)


def test_teacher_layers_refuses_a_different_width():
    teacher = AudioEncoder(ModelDims(n_mels=16, n_ctx=64, n_state=64, n_head=2, n_layer=2))
    cfg = StudentConfig(init="teacher-layers", n_state=32, n_head=2, n_layer=1)
    with pytest.raises(StudentInitError, match="n_state=32.*n_state=64"):
        init_student(cfg, student_dims(cfg, 16), 4, teacher_encoder=teacher)


def test_whisper_init_loads_the_encoder_and_explains_a_dims_mismatch(tmp_path):
    dims = ModelDims(n_mels=80, n_ctx=1500, n_state=64, n_head=2, n_layer=2)
    reference = write_openai_checkpoint(tmp_path / "w.pt", dims)
    cfg = StudentConfig(init=f"whisper:{tmp_path / 'w.pt'}", n_state=64, n_head=2, n_layer=2)
    student = init_student(cfg, student_dims(cfg, 80), 5)
    for (name, s), (_, r) in zip(student.encoder.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(s, r), name
    wrong = StudentConfig(init=f"whisper:{tmp_path / 'w.pt'}", preset="tiny")
    with pytest.raises(StudentInitError, match=r"n_state=384.*n_state=64"):
        init_student(wrong, student_dims(wrong, 80), 5)
    deeper = StudentConfig(init=f"whisper:{tmp_path / 'w.pt'}", n_state=64, n_head=2, n_layer=3)
    with pytest.raises(StudentInitError, match=r"n_layer=3.*n_layer=2"):
        init_student(deeper, student_dims(deeper, 80), 5)


def test_a_shallower_student_takes_evenly_spaced_whisper_blocks(tmp_path):
    reference = write_openai_checkpoint(
        tmp_path / "w.pt", ModelDims(n_mels=80, n_ctx=1500, n_state=64, n_head=2, n_layer=4)
    )
    cfg = StudentConfig(init=f"whisper:{tmp_path / 'w.pt'}", n_state=64, n_head=2, n_layer=2)
    student = init_student(cfg, student_dims(cfg, 80), 5)
    for i, j in enumerate([0, 3]):  # round(linspace(0, 3, 2))
        for (name, s), (_, r) in zip(
            student.encoder.blocks[i].state_dict().items(), reference.blocks[j].state_dict().items()
        ):
            assert torch.equal(s, r), f"block {i} {name}"
    assert torch.equal(student.encoder.conv1.weight, reference.conv1.weight)
    assert torch.equal(student.encoder.ln_post.weight, reference.ln_post.weight)


class FakeDataset:
    """What TeacherCache needs of a MelDataset: items, fingerprint, feature settings."""

    def __init__(self, n=6, n_mels=16, tag="a"):
        g = torch.Generator().manual_seed(1)
        self.items = [(torch.randn(n_mels, 20 + 3 * i, generator=g), i % 2, i) for i in range(n)]
        self.n_mels, self.augment, self.pad_to_30s, self.tag = n_mels, False, False, tag
        self.labels = ["b", "a"]  # the teacher's head has ["a", "b"]: its logits come back reordered

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def fingerprint(self):
        return f"fake-{self.tag}-{len(self)}"

    def clean_view(self, n_mels, progress=True):
        assert n_mels == self.n_mels  # already clean, with the teacher's bins
        return self


def test_teacher_cache_runs_the_teacher_once_and_reuses_the_file(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "teacher.safetensors", IntentClassifier(SMALL, 2), ["a", "b"], 32)
    teacher = load_teacher(path)
    assert teacher.kind == "quads" and all(not p.requires_grad for p in teacher.encoder.parameters())
    calls = []
    teacher.encoder.register_forward_hook(lambda *a: calls.append(1))
    cache, data, pool = TeacherCache(tmp_path / "cache"), FakeDataset(), ChannelMaxPool(32, 16)
    first = cache.targets(teacher, data, pool, batch_size=4, progress=False)
    assert first.embeddings.shape == (6, 16) and first.logits.shape == (6, 2) and len(calls) == 2  # batches of 4
    second = TeacherCache(tmp_path / "cache").targets(teacher, data, pool, batch_size=4, progress=False)
    assert (
        len(calls) == 2
        and torch.equal(first.embeddings, second.embeddings)
        and torch.equal(first.logits, second.logits)
    )
    # Row i is clip i, and each equals the teacher run on that clip alone; logits in the data's label order.
    mel = data[3][0][None]
    torch.testing.assert_close(
        first.embeddings[3], teacher.targets(mel, None, pool).embeddings[0], atol=1e-5, rtol=1e-5
    )
    _, reference = load_checkpoint(path).model(mel)
    torch.testing.assert_close(first.logits[3], reference[0].flip(0), atol=1e-5, rtol=1e-5)
    # Other data, or another teacher, is another cache entry.
    assert cache.key(teacher, FakeDataset(tag="b"), pool) != cache.key(teacher, data, pool)
    other = load_teacher(save_checkpoint(tmp_path / "t2.safetensors", IntentClassifier(SMALL, 2), ["a", "b"], 16))
    assert cache.key(other, data, pool) != cache.key(teacher, data, pool)
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_teacher_from_an_openai_checkpoint(tmp_path):
    write_openai_checkpoint(tmp_path / "w.pt", ModelDims(n_mels=80, n_ctx=1500, n_state=64, n_head=2, n_layer=2))
    teacher = load_teacher(tmp_path / "w.pt")
    assert teacher.kind == "whisper" and teacher.width == 64 and len(teacher.sha256) == 64


def test_the_student_head_starts_from_the_teacher_s_over_the_same_labels(tmp_path):
    torch.manual_seed(0)
    teacher = load_teacher(save_checkpoint(tmp_path / "t.safetensors", IntentClassifier(SMALL, 3), ["x", "y", "z"], 32))
    embedding = torch.randn(5, SMALL.n_state)
    expected = teacher.head(embedding)[:, [2, 0, 1]]  # in the student's order z, x, y

    same_width = IntentClassifier(SMALL, 3)
    assert copy_teacher_head(same_width, teacher, ["z", "x", "y"]) == "the teacher's head"
    torch.testing.assert_close(same_width.head(embedding), expected)

    narrow = IntentClassifier(ModelDims(n_mels=16, n_ctx=64, n_state=16, n_head=2, n_layer=1), 3)
    projection = StudentProjection(16, SMALL.n_state)
    assert "through the width projection" in copy_teacher_head(narrow, teacher, ["z", "x", "y"], projection)
    student_embedding = torch.randn(5, 16)
    torch.testing.assert_close(
        narrow.head(student_embedding), teacher.head(projection(student_embedding))[:, [2, 0, 1]]
    )
    assert copy_teacher_head(narrow, teacher, ["z", "x", "y"]).startswith("random: the teacher's head reads width")
    assert copy_teacher_head(IntentClassifier(SMALL, 2), teacher, ["x", "q"]).startswith(
        "random: the teacher has no head"
    )
