"""Checkpoints and resume: crash consistency, integrity, the run fingerprint, the lock, the
loss log and leftovers (NOTE [ Checkpoints ] in edgetrain/runtime/_checkpoint.py).

Oracles: an uninterrupted run (bit-identical weights and losses), the checkpoint's bytes as
safetensors' own reader sees them, the process table (PIDs), the file system (which files
exist, their sizes), and the 8-byte header length safetensors' format defines.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_runtime import P, R, forced_plan

from edgetrain.errors import (
    CheckpointCorruptError,
    CheckpointLockedError,
    CheckpointMismatchError,
    EdgetrainError,
    InvalidArgumentError,
)
from edgetrain.models import build_model
from edgetrain.runtime import Trainer, _checkpoint, _loop, _losslog, _paging, train_loop
from edgetrain.runtime._lock import CheckpointLock

RUN = dict(lr=0.05, checkpoint_every=1, show_progress=False)


@functools.lru_cache(maxsize=None)
def _setup(optimizer: str = "momentum"):
    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    plan = forced_plan(model, x, "mcu-cnn", 4, 2, [R, P], optimizer=optimizer)
    init = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(32, *x.shape[1:], generator=gen)
    ys = torch.randint(0, 5, (32,), generator=gen)
    return plan, init, xs, ys


def _fresh(optimizer: str = "momentum"):
    """(model at its initial weights, plan, xs, ys)."""
    plan, init, xs, ys = _setup(optimizer)
    model, _ = build_model("mcu-cnn", pretrained=False)
    model.load_state_dict(init)
    return model, plan, xs, ys


def _train(d, steps=3, optimizer="momentum", **kw):
    model, plan, xs, ys = _fresh(optimizer)
    res = train_loop(model, plan, xs, ys, steps=steps, checkpoint_dir=d, **{**RUN, **kw})
    return model, res


def _rewrite(path: Path, edit) -> None:
    """Re-save a checkpoint after `edit(tensors, metadata)` (as a hand or a tool would)."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    edit(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


def _header_bytes(path: Path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


# -- crash consistency: kill at any instant -------------------------------------------------


def _train_cmd(plan_path, ckdir, steps):
    return [
        sys.executable,
        "-m",
        "edgetrain.cli",
        "train",
        "--plan",
        str(plan_path),
        "--data",
        "digits:0-4",
        "--steps",
        str(steps),
        "--resume",
        str(ckdir),
        "--checkpoint-every",
        "1",
        "--json",
    ]


def test_kill_dash_nine_then_resume_matches_uninterrupted(tmp_path):
    # Prepare: a plan on disk (it pages activations); each process pages into its own TMPDIR
    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    p = forced_plan(model, x, "mcu-cnn", 8, 8, [R, P], freeze_bn=False, optimizer="momentum")
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(p.to_json())
    pages = tmp_path / "pages"
    pages.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(pages)}
    steps = 400  # long enough (fsync per step) that the kill lands mid-run, not after it
    # Execute: uninterrupted run
    full = subprocess.run(
        _train_cmd(plan_path, tmp_path / "a", steps),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    # ... and a run killed with SIGKILL mid-training (it holds the lock and has a paging file
    # open), then resumed
    proc = subprocess.Popen(
        _train_cmd(plan_path, tmp_path / "b", steps),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    prog = tmp_path / "b" / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if prog.exists() and json.loads(prog.read_text() or "{}").get("step", 0) >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(prog.read_text())["step"]
    lock_after_kill = json.loads((tmp_path / "b" / "lock").read_text())
    leftovers_after_kill = sorted(q.name for q in pages.iterdir())
    resumed = subprocess.run(
        _train_cmd(plan_path, tmp_path / "b", steps),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    # Assert: bit-identical weights and losses; the dead writer's lock was taken over and the
    # resumed run released it; the loss logs agree; nothing left behind
    assert 3 <= killed_at < steps
    assert lock_after_kill["pid"] == proc.pid
    a = load_file(str(tmp_path / "a" / "state.safetensors"))
    b = load_file(str(tmp_path / "b" / "state.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert json.loads(full.stdout)["losses"] == json.loads(resumed.stdout)["losses"]
    log_a = (tmp_path / "a" / "losses.log").read_text()
    assert (tmp_path / "b" / "losses.log").read_text() == log_a
    assert len(log_a.splitlines()) == steps
    assert not (tmp_path / "b" / "lock").exists()
    assert leftovers_after_kill == [] and list(pages.iterdir()) == []
    assert not list((tmp_path / "b").glob(".tmp-*"))


class _Crash(Exception):
    """Stands in for SIGKILL at one exact instant of a checkpoint write."""


def _arm_crash(monkeypatch, where: str, step: int = 4) -> None:
    """Make the next checkpoint write of `step` die at `where`."""
    from edgetrain import storage

    if where == "after-commit":  # state committed, progress.json not yet written
        real_json = _checkpoint.write_json_atomic

        def json_then_die(obj, path, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == step:
                raise _Crash("killed after the commit")
            return real_json(obj, path, *a, **k)

        monkeypatch.setattr(_checkpoint, "write_json_atomic", json_then_die)
    elif where == "mid-tensor-write":  # half a temp file, no rename
        real_save = storage.save_file

        def torn(data, path, metadata=None):
            if metadata["step"] == str(step):
                Path(path).write_bytes(b"\x00" * 100)
                raise _Crash("killed while writing the tensors")
            return real_save(data, path, metadata=metadata)

        monkeypatch.setattr(storage, "save_file", torn)
    elif where in ("after-log-append", "torn-log-record"):
        real_append = _losslog.LossLog.append

        def append_then_die(self, records):
            if records and records[-1].step == step:
                if where == "after-log-append":
                    real_append(self, records)
                else:
                    with open(self.current, "ab") as f:
                        f.write(_losslog.format_record(step, records[-1].loss)[:7])
                raise _Crash("killed around the log append")
            return real_append(self, records)

        monkeypatch.setattr(_losslog.LossLog, "append", append_then_die)


@pytest.mark.parametrize(
    "where", ["after-log-append", "torn-log-record", "mid-tensor-write", "after-commit"]
)
def test_kill_at_every_checkpoint_instant_resumes_exactly(tmp_path, monkeypatch, where):
    # Prepare: an uninterrupted reference run
    ref_model, ref = _train(tmp_path / "a", steps=6)
    # Execute: a run killed at one instant of step 4's checkpoint, then resumed
    _arm_crash(monkeypatch, where)
    with pytest.raises(_Crash):
        _train(tmp_path / "b", steps=6)
    monkeypatch.undo()
    model, resumed = _train(tmp_path / "b", steps=6)  # the process died: a fresh model
    # Assert: nothing lost, nothing torn, bit-identical to the uninterrupted run
    assert resumed.losses == ref.losses
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref_model.state_dict()[k], rtol=0, atol=0, msg=k)
    b, a = tmp_path / "b", tmp_path / "a"
    assert (b / "losses.log").read_bytes() == (a / "losses.log").read_bytes()
    assert json.loads((b / "progress.json").read_text())["step"] == 6
    assert not list(b.glob(".tmp-*")) and not (b / "lock").exists()


def test_atomic_write_fsyncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    # Prepare: record renames and fsyncs (of files and of directories) in order
    import stat

    from edgetrain import storage

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        return real_fsync(fd)

    def replace(a, b):
        events.append("rename")
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    # Execute
    storage.write_json_atomic({"a": 1}, tmp_path / "x.json")
    # Assert: the file's bytes, then the rename, then the directory entry are made durable
    assert events == ["fsync-file", "rename", "fsync-dir"]


# -- the run fingerprint -------------------------------------------------------------------


def test_resume_with_another_plan_is_refused_even_with_resume_anyway(tmp_path):
    # Prepare: a checkpoint of a momentum run
    _train(tmp_path, steps=2, optimizer="momentum")
    before = (tmp_path / "state.safetensors").read_bytes()
    # Execute / Assert: an adam plan on the same folder is another run
    for anyway in (False, True):
        with pytest.raises(CheckpointMismatchError, match="plan.*optimizer.*cannot override"):
            _train(tmp_path, steps=4, optimizer="adam", resume_anyway=anyway)
    assert (tmp_path / "state.safetensors").read_bytes() == before


def test_resume_with_another_model_is_refused(tmp_path):
    # Prepare: a checkpoint; then the same plan on a model with other parameter dtypes
    _train(tmp_path, steps=2)
    model, plan, xs, ys = _fresh()
    model.double()
    plan = dataclasses.replace(plan, input_dtype="float64")  # the data matches; the model not
    # Execute / Assert
    with pytest.raises(CheckpointMismatchError, match=r"model \(parameter names, shapes"):
        train_loop(model, plan, xs.double(), ys, steps=4, checkpoint_dir=tmp_path, **RUN)


@pytest.mark.parametrize(
    "change,label",
    [
        (dict(lr=0.1), "learning rate"),
        (dict(seed=7), "data order seed"),
        (dict(data_spec="digits:5-9"), r"data \(--data\)"),
        (dict(data="other"), "training data contents"),
    ],
)
def test_resume_with_other_settings_needs_resume_anyway(tmp_path, change, label):
    # Prepare: a 2-step checkpoint written with lr 0.05, seed 0, data "digits:0-4"
    model, plan, xs, ys = _fresh()
    base = dict(RUN, data_spec="digits:0-4")
    train_loop(model, plan, xs, ys, steps=2, checkpoint_dir=tmp_path, **base)
    kw = {**base, **{k: v for k, v in change.items() if k != "data"}}
    xs2 = xs.flip(0) if "data" in change else xs
    # Execute / Assert: refused, naming the setting and the flag ...
    model, *_ = _fresh()
    with pytest.raises(CheckpointMismatchError, match=f"{label}.*--resume-anyway"):
        train_loop(model, plan, xs2, ys, steps=4, checkpoint_dir=tmp_path, **kw)
    # ... and accepted with it: the run goes on from step 2 and records the new settings
    with pytest.warns(RuntimeWarning, match="changed settings"):
        res = train_loop(
            model, plan, xs2, ys, steps=4, checkpoint_dir=tmp_path, resume_anyway=True, **kw
        )
    assert len(res.losses) == 4 and res.losses_from_step == 0
    model, *_ = _fresh()
    res = train_loop(model, plan, xs2, ys, steps=5, checkpoint_dir=tmp_path, **kw)
    assert len(res.losses) == 5


def test_resume_past_the_requested_steps_is_refused(tmp_path):
    _train(tmp_path, steps=4)
    with pytest.raises(CheckpointMismatchError, match="at step 4, past --steps 2"):
        _train(tmp_path, steps=2)


# -- integrity -------------------------------------------------------------------------------


def test_flipped_exponent_bits_in_stored_weights_are_refused(tmp_path):
    # Prepare: a checkpoint whose 40 first weights of one tensor get an exponent bit flipped
    _train(tmp_path, steps=2)
    path = tmp_path / "state.safetensors"

    def flip(tensors, meta):
        name = next(k for k, v in tensors.items() if k.startswith("model/") and v.numel() >= 40)
        bits = tensors[name].reshape(-1).view(torch.int32)
        bits[:40] ^= 1 << 29
        flip.name = name

    _rewrite(path, flip)
    model, plan, xs, ys = _fresh()
    before = copy.deepcopy(model.state_dict())
    # Execute / Assert: refused, naming the file and tensor; the model is left untouched
    with pytest.raises(CheckpointCorruptError, match=f"{path}.*{flip.name}.*sha256"):
        train_loop(model, plan, xs, ys, steps=4, checkpoint_dir=tmp_path, **RUN)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def _drop(key):
    def edit(tensors, meta):
        if key in tensors:
            del tensors[key]
        else:
            del meta[key]

    return edit


def _set(key, value):
    def edit(tensors, meta):
        meta[key] = value

    return edit


@pytest.mark.parametrize(
    "edit,match",
    [
        (_set("step", "900"), "step 900 and cursor 8 disagree"),
        (_set("step", "-50"), "'step' is '-50', not an integer"),
        (_set("step", "2.0"), "'step' is '2.0', not an integer"),
        (_drop("step"), "'step' is missing"),
        (_set("fingerprint", "{not json"), "'fingerprint' is not JSON"),
        (_drop("fingerprint"), "'fingerprint' is missing"),
        (_set("batch_size", "4 "), "'batch_size' is '4 '"),
        (_drop("rng/cpu"), r"tensors missing \['rng/cpu'\]"),
        (lambda t, m: m.clear(), "'format' is missing"),
        (_set("cursor", "12"), "step 2 and cursor 12 disagree"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_metadata_is_refused_naming_the_file_and_field(tmp_path, edit, match):
    # Prepare: a 2-step checkpoint (batch 4: cursor 8) edited by hand
    _train(tmp_path, steps=2)
    path = tmp_path / "state.safetensors"
    _rewrite(path, edit)
    # Execute / Assert
    with pytest.raises(CheckpointCorruptError, match=f"{path} is corrupt: .*{match}"):
        _train(tmp_path, steps=4)


def test_truncated_or_empty_checkpoint_is_refused(tmp_path):
    _train(tmp_path, steps=2)
    path = tmp_path / "state.safetensors"
    raw = path.read_bytes()
    for cut in (0, 5, 100, len(raw) - 1):
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointCorruptError, match=f"{path} is not a valid tensor file"):
            _train(tmp_path, steps=4)


def test_resume_from_a_foreign_file_is_a_typed_error(tmp_path):
    # Prepare: a safetensors file that is not an edgetrain checkpoint
    tmp_path.mkdir(exist_ok=True)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "state.safetensors"))
    # Execute / Assert
    with pytest.raises(InvalidArgumentError, match="not an edgetrain training checkpoint"):
        _train(tmp_path, steps=1)


@functools.lru_cache(maxsize=1)
def _pristine() -> tuple[dict[str, bytes], dict, dict[str, torch.Tensor]]:
    """A valid 3-step checkpoint folder's files, its metadata and its tensors."""
    d = Path(tempfile.mkdtemp(prefix="edgetrain-ck-"))
    try:
        _train(d, steps=3)
        files = {q.name: q.read_bytes() for q in d.iterdir()}
        with safe_open(str(d / "state.safetensors"), framework="pt") as f:
            meta = dict(f.metadata())
        return files, meta, load_file(str(d / "state.safetensors"))
    finally:
        shutil.rmtree(d)


def _recompute(meta: dict) -> None:
    meta["meta_sha256"] = _checkpoint._meta_sha256(meta)


_byte_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("put"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)),
)
_meta_value = st.one_of(
    st.text(max_size=12),
    st.integers(-(1 << 64), 1 << 64).map(str),
    st.sampled_from(["3", "12", "4", "0", "{}", "[]", "null", '{"step": 3}']),
)
_meta_mutation = st.tuples(
    st.just("meta"),
    st.sampled_from(
        ["format", "step", "cursor", "batch_size", "fingerprint", "tensor_sha256", "meta_sha256"]
        + ["extra"]
    ),
    _meta_value,
    st.booleans(),  # recompute the metadata's checksum (a forger who knows the format)
)
_drop_mutation = st.tuples(st.just("drop"), st.integers(0, 1000), st.booleans())


def _mutate(raw: bytes, meta: dict, tensors: dict, mutation) -> bytes:
    kind = mutation[0]
    if kind in ("flip", "cut", "put", "insert"):
        at = mutation[1] % (len(raw) + 1)
        if kind == "flip":
            at = min(at, len(raw) - 1)
            return raw[:at] + bytes([raw[at] ^ (1 << mutation[2])]) + raw[at + 1 :]
        if kind == "cut":
            return raw[:at]
        if kind == "put":
            return raw[:at] + mutation[2] + raw[at + len(mutation[2]) :]
        return raw[:at] + mutation[2] + raw[at:]
    meta, tensors = dict(meta), dict(tensors)
    if kind == "meta":
        _, key, value, recompute = mutation
        meta[key] = value
    else:
        _, index, recompute = mutation
        del tensors[sorted(tensors)[index % len(tensors)]]
    if recompute:
        _recompute(meta)
    with tempfile.TemporaryDirectory() as d:
        save_file(tensors, f"{d}/x", metadata=meta)
        return Path(f"{d}/x").read_bytes()


@pytest.fixture(scope="module")
def loader_rig():
    model, plan, xs, ys = _fresh()
    fp = _checkpoint.run_fingerprint(model, plan, xs, ys, lr=RUN["lr"], seed=0)
    return model, plan, fp


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation=st.one_of(_byte_mutation, _meta_mutation, _drop_mutation))
def test_checkpoint_loader_never_tracebacks_nor_accepts_a_changed_checkpoint(loader_rig, mutation):
    # Prepare: a valid checkpoint folder, one mutation of its tensor file, a scrambled model
    files, meta, tensors = _pristine()
    model, plan, fp = loader_rig
    raw = _mutate(files["state.safetensors"], meta, tensors, mutation)
    with torch.no_grad():
        for v in model.state_dict().values():
            v.copy_(torch.full_like(v, 7))
    with tempfile.TemporaryDirectory() as d:
        for name, data in files.items():
            Path(d, name).write_bytes(data)
        Path(d, "state.safetensors").write_bytes(raw)
        # Execute: resume; only a typed error or an identical resume may come out
        with _checkpoint.CheckpointDir(d, fp) as ck, Trainer(model, plan, lr=RUN["lr"]) as t:
            try:
                resumed = ck.resume(t)
            except EdgetrainError as e:
                assert isinstance(e, CheckpointCorruptError | CheckpointMismatchError), e
                return
            got = {f"model/{k}": v for k, v in model.state_dict().items()}
            got.update(_checkpoint.opt_tensors(t))
            got["rng/cpu"] = torch.get_rng_state()
    # Assert: accepted means identical to the pristine checkpoint
    assert resumed.step == 3 and len(resumed.losses) == 3
    assert got.keys() == tensors.keys()
    for k, v in tensors.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


# -- the lock --------------------------------------------------------------------------------

_HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from edgetrain.runtime._lock import CheckpointLock
    with CheckpointLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


def test_second_writer_on_a_locked_directory_is_refused_naming_the_pid(tmp_path):
    # Prepare: a checkpoint, and another live process holding the folder's lock
    _train(tmp_path, steps=2)
    before = {q.name: q.read_bytes() for q in tmp_path.iterdir() if q.name != "lock"}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        # Execute / Assert: refused, naming the holder's PID; nothing written
        with pytest.raises(CheckpointLockedError, match=f"in use by PID {holder.pid} "):
            _train(tmp_path, steps=4)
        after = {q.name: q.read_bytes() for q in tmp_path.iterdir() if q.name != "lock"}
        assert after == before
    finally:
        holder.communicate("")
    # ... and once the holder is gone the folder is free again
    _, res = _train(tmp_path, steps=4)
    assert len(res.losses) == 4


def test_two_writers_in_one_process_are_refused(tmp_path):
    with CheckpointLock(tmp_path):
        with pytest.raises(CheckpointLockedError, match=f"PID {os.getpid()}"):
            _train(tmp_path, steps=1)


def test_stale_lock_of_a_dead_process_is_taken_over_and_released(tmp_path):
    # Prepare: a lock file naming a process that has exited
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(dead.stdout)
    import socket

    (tmp_path / "lock").write_text(
        json.dumps({"pid": pid, "host": socket.gethostname(), "start": None})
    )
    # Execute
    _, res = _train(tmp_path, steps=2)
    # Assert: trained, and the lock is gone after the run
    assert len(res.losses) == 2 and not (tmp_path / "lock").exists()


def test_lock_with_a_live_pid_is_respected_without_flock(tmp_path):
    # Prepare: a lock file written by a live process that holds no flock (e.g. another host's
    # file system without flock); PID 1 is alive on every system
    import socket

    (tmp_path / "lock").write_text(
        json.dumps({"pid": 1, "host": socket.gethostname(), "start": None})
    )
    # Execute / Assert
    with pytest.raises(CheckpointLockedError, match="PID 1 "):
        _train(tmp_path, steps=1)


def test_lock_is_released_when_the_run_fails(tmp_path, monkeypatch):
    # Prepare: a run that dies with an exception at step 2
    _arm_crash(monkeypatch, "after-commit", step=2)
    with pytest.raises(_Crash):
        _train(tmp_path, steps=4)
    monkeypatch.undo()
    # Assert: no lock left; the next run resumes
    assert not (tmp_path / "lock").exists()
    _, res = _train(tmp_path, steps=4)
    assert len(res.losses) == 4


# -- the loss history ------------------------------------------------------------------------


def test_checkpoint_header_and_progress_do_not_grow_with_the_run(tmp_path):
    # Prepare / Execute: the same run checkpointed after 3 steps and after 300
    _train(tmp_path / "short", steps=3, checkpoint_every=3)
    _train(tmp_path / "long", steps=300, checkpoint_every=100)
    # Assert: the header and progress.json hold no history (a few digits more at most)
    short, long_ = tmp_path / "short", tmp_path / "long"
    grow = _header_bytes(long_ / "state.safetensors") - _header_bytes(short / "state.safetensors")
    assert grow <= 16
    assert (long_ / "progress.json").stat().st_size <= (short / "progress.json").stat().st_size + 8
    assert len((long_ / "losses.log").read_text().splitlines()) == 300


def test_ten_million_recorded_steps_still_checkpoint_and_resume(tmp_path):
    # Prepare: a checkpoint at step 10,000,000 whose log retains its last 1,000 records (the
    # rest rotated away), as a device that ran that long would have
    step0 = 10_000_000
    model, plan, xs, ys = _fresh()
    fp = _checkpoint.run_fingerprint(model, plan, xs, ys, lr=RUN["lr"], seed=0)
    with _checkpoint.CheckpointDir(tmp_path, fp) as ck, Trainer(model, plan, lr=RUN["lr"]) as t:
        for s in range(step0 - 999, step0 + 1):
            ck.record(s, 1.0 / s)
        ck.commit(t, step0, step0 * plan.batch_size)
    # Execute: resume and train three more steps, checkpointing each
    model, *_ = _fresh()
    res = train_loop(model, plan, xs, ys, steps=step0 + 3, checkpoint_dir=tmp_path, **RUN)
    # Assert: saving works, the header stays small, the history is the log's window
    path = tmp_path / "state.safetensors"
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == step0 + 3
    assert _header_bytes(path) < 16 * 1024
    assert res.losses_from_step == step0 - 1000 and len(res.losses) == 1003
    assert res.losses[:2] == [1.0 / (step0 - 999), 1.0 / (step0 - 998)]
    assert (tmp_path / "losses.log").stat().st_size < 64 * 1003


def test_loss_log_rotates_at_its_size_limit(tmp_path):
    # Prepare: a log with 4 KiB segments, 2 of them kept beside the current one
    log = _losslog.LossLog(tmp_path, segment_bytes=4096, segments_kept=2)
    # Execute: 100,000 records appended in batches of 1,000
    for start in range(1, 100_001, 1000):
        log.append([(s, s / 7) for s in range(start, start + 1000)])
    # Assert: at most 3 files of 4 KiB; the retained records are the last ones, consecutive
    sizes = [q.stat().st_size for q in log.segments()]
    assert len(sizes) <= 3 and max(sizes) <= 4096
    kept = log.read(100_000)
    assert kept[-1].step == 100_000 and [r.step for r in kept] == list(range(kept[0].step, 100_001))
    assert all(r.loss == r.step / 7 for r in kept)


def test_loss_log_that_lost_committed_records_is_refused(tmp_path):
    # Prepare: a 4-step checkpoint whose log lost its last line
    _train(tmp_path, steps=4)
    log = tmp_path / "losses.log"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:3]))
    # Execute / Assert
    with pytest.raises(CheckpointCorruptError, match="ends at step 3.*checkpoint is at step 4"):
        _train(tmp_path, steps=6)


def test_loss_log_with_a_changed_record_is_refused(tmp_path):
    _train(tmp_path, steps=4)
    log = tmp_path / "losses.log"
    lines = log.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace(" ", " 9", 1)
    log.write_text("".join(lines))
    with pytest.raises(CheckpointCorruptError, match=r"losses.log:2: .*CRC32|losses.log:2"):
        _train(tmp_path, steps=6)


# -- leftovers -------------------------------------------------------------------------------


def test_leftover_temp_files_are_removed_on_start(tmp_path):
    # Prepare: a checkpoint and the 0-byte temp file a kill before the rename leaves
    _train(tmp_path, steps=2)
    (tmp_path / ".tmp-k1ll3d.safetensors").write_bytes(b"")
    # Execute
    _train(tmp_path, steps=3)
    # Assert
    assert not list(tmp_path.glob(".tmp-*"))


_PAGE_THEN_WAIT = textwrap.dedent(
    """
    import sys
    from edgetrain.runtime import PagingStore
    s = PagingStore(sys.argv[1])
    s._f.write(b"x" * 4096)
    print("paging", flush=True)
    sys.stdin.read()
    """
)


def test_paging_files_never_outlive_their_process(tmp_path):
    # Prepare: a paging folder with a leftover of an older version and of a dead process
    (tmp_path / "edgetrain-page-abc123_x.bin").write_bytes(b"old")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    (tmp_path / f"edgetrain-page-{int(dead.stdout)}-zz.bin").write_bytes(b"dead")
    # Execute: a process pages into the folder and is killed with SIGKILL
    proc = subprocess.Popen(
        [sys.executable, "-c", _PAGE_THEN_WAIT, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "paging"
    while_running = sorted(q.name for q in tmp_path.iterdir())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Assert: the leftovers went when the store started; its own file never had a name
    assert while_running == [] and list(tmp_path.iterdir()) == []
    assert _paging.remove_stale_paging_files(tmp_path) == []


def test_steps_past_the_in_memory_window_keep_only_the_last_losses(tmp_path, monkeypatch):
    # Prepare: a 3-loss window in memory
    monkeypatch.setattr(_checkpoint, "LOSS_HISTORY_KEPT", 3)
    monkeypatch.setattr(_loop, "LOSS_HISTORY_KEPT", 3)
    _, full = _train(tmp_path / "a", steps=5)
    # Assert: the window and where it starts; the log keeps all five
    assert full.losses_from_step == 2 and len(full.losses) == 3
    assert len((tmp_path / "a" / "losses.log").read_text().splitlines()) == 5


def test_resume_folder_that_is_a_file_is_a_typed_error(tmp_path):
    from edgetrain.errors import OutputPathError

    (tmp_path / "ck").write_text("not a folder")
    with pytest.raises(OutputPathError, match="is a file, not a checkpoint folder"):
        _train(tmp_path / "ck", steps=1)
