"""The epoch plan of a run: which phase each epoch is, and which bit widths train in which branch.

A schedule is a string with one letter per epoch: ``D`` (distillation) or ``Q`` (quantization).
The paper's default is ``DDDQQQDDDDDDQQQQQQQQ`` (20 epochs: D 1-3, Q 4-6, D 7-12, Q 13-20).

How each strategy uses it (several ``--bits`` in one run):

* ``finetune``: every epoch is ``F`` (cross-entropy only, no teacher); only the schedule's length
  counts. Emits 32/16-bit checkpoints.
* ``distill``: every epoch is ``D``. Emits 32/16-bit checkpoints.
* ``qad``: as ``distill``, then k-means quantization at each requested width with no retraining.
* ``mct``: the leading ``D`` epochs (before the first ``Q``) do not depend on the bit width, so they
  run once, shared; the rest of the schedule then runs once per *branch*, starting from the state
  at the end of the shared epochs. There is a branch per width <= 8 (its ``Q`` phases quantize to
  that width) and one float branch for 16 and 32 (trained in float32; the 16-bit file is its
  float16 export). The float branch has no codebooks, so its ``Q`` epochs are ``F`` epochs
  (cross-entropy with the distillation optimizer): the quantization phase's SGD at lr 0.01, with
  no codebook to snap the weights back, took a Whisper-initialised student from 99.2% to 4.6%
  validation accuracy in one epoch. The schedule must end with ``Q``: the paper's final
  quantization phase.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.codebook import storage

PHASE_NAMES = {"D": "distillation", "Q": "quantization", "F": "fine-tuning"}


def parse_pattern(pattern: str, strategy: str = "mct") -> str:
    """The validated, upper-cased pattern. Raises ``ValueError`` with the reason."""
    p = pattern.strip().upper()
    if not p:
        raise ValueError("the schedule is empty; give one letter per epoch, e.g. DDDQQQDDDDDDQQQQQQQQ")
    if set(p) - {"D", "Q"}:
        raise ValueError(f"{pattern!r}: use only D (distillation) and Q (quantization), one letter per epoch")
    if strategy == "mct" and not p.endswith("Q"):
        raise ValueError(f"{pattern!r}: MCT ends with a quantization phase; the last letter must be Q")
    return p


def runs(pattern: str) -> list[tuple[str, int]]:
    """Contiguous phases: ``"DDQQQD"`` -> ``[("D", 2), ("Q", 3), ("D", 1)]``."""
    out: list[tuple[str, int]] = []
    for letter in pattern:
        if out and out[-1][0] == letter:
            out[-1] = (letter, out[-1][1] + 1)
        else:
            out.append((letter, 1))
    return out


def scale_pattern(pattern: str, epochs: int) -> str:
    """``pattern`` stretched or shrunk to ``epochs`` letters, keeping its phases in proportion.

    Each phase keeps at least one epoch (largest-remainder rounding). With fewer epochs than
    phases, the last ``epochs`` phases are kept, one epoch each, so MCT still ends with ``Q``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    phases = runs(parse_pattern(pattern, strategy=""))
    if epochs < len(phases):
        return "".join(letter for letter, _ in phases[-epochs:])
    total = sum(n for _, n in phases)
    spare = epochs - len(phases)  # epochs beyond one per phase, shared in proportion
    exact = [spare * n / total for _, n in phases]
    counts = [1 + int(x) for x in exact]
    by_remainder = sorted(range(len(phases)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    for i in by_remainder[: epochs - sum(counts)]:
        counts[i] += 1
    return "".join(letter * c for (letter, _), c in zip(phases, counts))


@dataclass(frozen=True)
class Branch:
    """A sequence of epochs trained from one starting state.

    ``train_bits``: the width its Q phases quantize to (32: none). ``exports``: the widths
    written as checkpoints when it ends; those below ``train_bits`` are quantized post hoc (QaD).
    ``shared``: the shared leading epochs of MCT; they export nothing and every other branch
    starts from their end state.
    """

    name: str
    letters: str
    first_epoch: int
    train_bits: int = 32
    exports: tuple[int, ...] = ()
    shared: bool = False


@dataclass(frozen=True)
class Epoch:
    """One unit of work: epoch ``index`` (0-based, into the schedule) of ``branch``, in a phase."""

    branch: int  # index into Plan.branches
    index: int
    kind: str  # D, Q or F
    phase_start: int  # schedule index of the first epoch of this phase
    phase_epochs: int  # epochs in this phase

    @property
    def epoch_in_phase(self) -> int:
        return self.index - self.phase_start


@dataclass(frozen=True)
class Plan:
    strategy: str
    pattern: str
    branches: tuple[Branch, ...]

    @property
    def epochs(self) -> list[Epoch]:
        """Every epoch of every branch, in the order they run."""
        out = []
        for b, branch in enumerate(self.branches):
            i = branch.first_epoch
            for letter, n in runs(branch.letters):
                out.extend(Epoch(b, i + k, letter, i, n) for k in range(n))
                i += n
        return out

    def starts_branch(self, i: int) -> bool:
        """Whether epoch ``i`` of ``epochs`` is the first of its branch."""
        epochs = self.epochs
        return i == 0 or epochs[i - 1].branch != epochs[i].branch

    def ends_branch(self, i: int) -> bool:
        """Whether epoch ``i`` of ``epochs`` is the last of its branch (then its checkpoints are written)."""
        epochs = self.epochs
        return i + 1 == len(epochs) or epochs[i + 1].branch != epochs[i].branch

    def describe(self) -> str:
        parts = []
        for branch in self.branches:
            what = "shared" if branch.shared else f"exports {','.join(map(str, branch.exports))} bit"
            parts.append(
                f"{branch.name}: {branch.letters} (epochs {branch.first_epoch + 1}-"
                f"{branch.first_epoch + len(branch.letters)}, {what})"
            )
        return "; ".join(parts)


def make_plan(strategy: str, pattern: str, bits: list[int]) -> Plan:
    """The branches and epochs of a run. ``bits`` are the widths to emit."""
    pattern = parse_pattern(pattern, strategy)
    exports = tuple(sorted(set(bits), reverse=True))
    floats = tuple(b for b in exports if storage(b) != "codebook")
    if strategy in ("finetune", "distill", "qad"):
        if strategy != "qad" and len(floats) != len(exports):
            raise ValueError(f"--strategy {strategy} emits 16/32-bit checkpoints only, not {exports}")
        letter = "F" if strategy == "finetune" else "D"
        return Plan(strategy, pattern, (Branch("float", letter * len(pattern), 0, 32, exports),))
    if strategy != "mct":
        raise ValueError(f"unknown strategy {strategy!r}")
    n_shared = len(pattern) - len(pattern.lstrip("D"))
    rest = pattern[n_shared:]
    branches = []
    if n_shared:
        branches.append(Branch("shared", pattern[:n_shared], 0, 32, (), shared=True))
    if floats:
        branches.append(Branch("float", rest.replace("Q", "F"), n_shared, max(floats), floats))
    for b in exports:
        if storage(b) == "codebook":
            branches.append(Branch(f"{b}bit", rest, n_shared, b, (b,)))
    return Plan(strategy, pattern, tuple(branches))
