"""Plans are data (issue 16): a plan file is untrusted input. Each defect found by the
adversarial review has a test here that fails on the code before the fix; the property-based
tests mutate valid plans, device files and data specs at random and hold every outcome to an
independent oracle: a valid value, or a typed `EdgetrainError` — never a traceback, never a
silent acceptance of an invalid value."""

from __future__ import annotations

import copy
import json
import math
import re
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import edgetrain
import edgetrain.cost as cost
from edgetrain.cli import main
from edgetrain.cost import load_device
from edgetrain.data import parse_spec
from edgetrain.errors import (
    DeviceFileError,
    EdgetrainError,
    InvalidArgumentError,
    PlanFileError,
    UnknownDeviceError,
    UntrustedPlanError,
)
from edgetrain.models import build_model
from edgetrain.planner import Plan

NRF_RAM = 256 * 1024  # the nRF52840's SRAM (its datasheet; the catalog's ram_bytes)
MCU_CNN_SAMPLE = 1 * 28 * 28 * 4  # one float32 28x28 grey image


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors exit (2) after printing the error
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def good_plan() -> Plan:
    model, x = build_model("mcu-cnn", pretrained=False)
    return edgetrain.plan(model, x, device="nrf52840", batch_size=2, name="mcu-cnn")


@pytest.fixture(scope="module")
def c_plan() -> Plan:
    model, x = build_model("mcu-cnn", pretrained=False)
    return edgetrain.plan(
        model, x, device="nrf52840", executor="c", precision="fp32", name="mcu-cnn"
    )


def _write(tmp_path: Path, d, name="plan.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


# -- hand-edited plans: every defect of the review is refused by the loader ---------------------


def _edit(d: dict, path: str, value) -> dict:
    d = copy.deepcopy(d)
    *head, last = re.findall(r"[^.\[\]]+", path)
    node = d
    for k in head:
        node = node[int(k)] if k.isdigit() else node[k]
    if value is _DELETE:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return d


_DELETE = object()

HAND_EDITS = [
    # (field, value, a fragment the refusal names)
    ("budget_bytes", 10, "budget"),  # the prediction no longer fits
    ("budget_bytes", -5, "budget_bytes"),
    ("budget_bytes", 10 * 1024 * 1024, "budget_forced"),  # more than the nRF52840's SRAM
    ("predicted.peak_bytes", -1, "peak_bytes"),
    ("device", "pdp-11", "pdp-11"),
    ("batch_size", True, "batch_size"),
    ("batch_size", 2.0, "batch_size"),
    ("batch_size", 3, "micro-batch"),  # 2-sample micro-batches do not divide 3
    ("params.0.channel_ratio", -3, "channel_ratio"),
    ("params.0.channel_ratio", float("nan"), "NaN"),
    ("params", [], "params"),
    ("params.0", {"name": "conv1.weight"}, "decision"),
    ("in_place_update", "yes", "in_place_update"),
    ("strategy", "magic", "strategy"),
    ("schema_version", 99, "schema_version"),
    ("batchsize", 4, "batchsize"),  # a typo is an unknown field, not silently ignored
    ("optimizer", _DELETE, "optimizer"),
]


@pytest.mark.parametrize(("field", "value", "names"), HAND_EDITS, ids=[e[0] for e in HAND_EDITS])
def test_hand_edited_plan_is_refused_with_the_field(tmp_path, good_plan, field, value, names):
    # Prepare: a valid plan with one field edited by hand
    path = tmp_path / "plan.json"
    d = _edit(good_plan.to_dict(), field, value)
    path.write_text(json.dumps(d))  # NaN is written as the non-standard `NaN` token
    # Execute / Assert: refused, naming what is wrong
    with pytest.raises(PlanFileError) as e:
        Plan.load(path)
    assert names in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("text", ["[1, 2, 3]", '"plan"', "null", "{", "", "\x00\xff"])
def test_a_plan_file_that_is_not_a_plan_object_is_a_plan_file_error(tmp_path, text):
    path = tmp_path / "plan.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(PlanFileError):
        Plan.load(path)


def test_a_forced_budget_above_the_device_loads(tmp_path, good_plan):
    # Prepare: the budget above the device's memory, and the plan says it was meant
    d = good_plan.to_dict()
    d["budget_bytes"], d["budget_forced"] = 10 * 1024 * 1024, True
    # Execute
    p = Plan.load(_write(tmp_path, d))
    # Assert
    assert p.budget_bytes == 10 * 1024 * 1024 and p.budget_forced


def test_a_written_plan_round_trips_and_records_what_it_is(good_plan):
    assert Plan.from_json(good_plan.to_json()) == good_plan
    assert good_plan.schema_version == 3 and good_plan.model_sha256 is None  # a built-in model
    assert good_plan.loss == "cross-entropy"
    assert good_plan.input_shape == (1, 28, 28) and good_plan.input_dtype == "float32"
    assert not good_plan.budget_forced


def test_a_version_1_plan_still_loads(good_plan):
    d = good_plan.to_dict()
    d["schema_version"] = 1
    for k in ("budget_forced", "model_sha256", "executor", "precision", "notes"):
        del d[k]
    del d["predicted_peak_bytes"]
    assert Plan.from_dict(d).params == good_plan.params


def test_the_plan_file_and_plan_json_agree_on_their_keys(capsys, tmp_path):
    # Execute: the same plan written with -o and printed with --json
    args = ["plan", "--model", "mcu-cnn", "--device", "nrf52840", "--no-check"]
    code, _, _ = run(capsys, *args, "-o", tmp_path / "p.json")
    code2, out, _ = run(capsys, *args, "--json")
    # Assert: every key of the file is printed, with the same top-level predicted peak
    written, printed = json.loads((tmp_path / "p.json").read_text()), json.loads(out)
    assert code == code2 == 0 and set(written) <= set(printed)
    assert written["predicted_peak_bytes"] == printed["predicted_peak_bytes"]
    assert written["predicted_peak_bytes"] == written["predicted"]["peak_bytes"]


def test_profile_fields_are_its_json_keys():
    model, x = build_model("mcu-cnn", pretrained=False)
    p = edgetrain.profile(model, x, device="nrf52840", batch_size=2, measure=True)
    for key, value in p.to_dict().items():
        if key == "device":  # the attribute is the Device record the key names
            assert p.device.name == value
            continue
        assert getattr(p, key) == value, key
    assert p.peak_bytes == p.cost.peak_bytes and p.measured_peak_bytes == p.measured.peak_bytes
    with pytest.raises(AttributeError, match="its fields: .*peak_bytes"):
        p.peak_byte  # noqa: B018


def test_a_version_2_plan_loads_with_cross_entropy_and_no_input_check(good_plan):
    # Prepare: a plan written before schema 3 (no loss, no input record)
    d = good_plan.to_dict()
    d["schema_version"] = 2
    for k in ("loss", "input_shape", "input_dtype", "predicted_peak_bytes"):
        del d[k]
    # Execute
    p = Plan.from_dict(d)
    # Assert: the loss all plans then used; no sample shape to check data against
    assert p.loss == "cross-entropy" and p.input_shape is None and p.input_dtype is None


@pytest.mark.parametrize(
    "field,value",
    [("loss", "MSE"), ("loss", "hinge"), ("loss", "custom:"), ("input_shape", [0, 28]),
     ("input_shape", [1.0, 28, 28]), ("input_dtype", "torch.float32"), ("input_dtype", None)],
)  # fmt: skip
def test_bad_loss_or_input_record_is_refused(good_plan, field, value):
    d = good_plan.to_dict()
    d[field] = value
    with pytest.raises(PlanFileError, match=f"field '{field}"):
        Plan.from_dict(d)


def test_c_plan_edited_to_another_batch_is_refused(tmp_path, c_plan):
    # Prepare: the C trainer's plan (batch 1, one arena for that batch) edited to batch 4
    d = c_plan.to_dict()
    assert d["executor"] == "c" and d["batch_size"] == 1
    d["batch_size"] = 4
    # Execute / Assert: the C trainer micro-batches nothing, so the prediction is not batch 4's
    with pytest.raises(PlanFileError, match="C executor"):
        Plan.load(_write(tmp_path, d))


def test_plan_for_a_board_file_loads_with_that_device(tmp_path):
    # Prepare: a board of the user's own (not in the catalog), and a plan made for it
    src = Path(cost.__file__).parent / "devices" / "nrf52840.toml"
    board = tmp_path / "board.toml"
    board.write_text(src.read_text().replace('name = "nrf52840"', 'name = "my-board"', 1))
    model, x = build_model("mcu-cnn", pretrained=False)
    p = edgetrain.plan(model, x, device=str(board), name="mcu-cnn")
    path = _write(tmp_path, p.to_dict())
    # Execute / Assert: unknown without the board; loads with it
    with pytest.raises(PlanFileError, match="my-board"):
        Plan.load(path)
    assert Plan.load(path, device=str(board)) == p


def test_plan_lists_exactly_the_models_parameters(good_plan):
    model, _ = build_model("mcu-cnn", pretrained=False)
    good_plan.check_matches_model(model)  # the plan's own model passes
    truncated = Plan.from_dict({**good_plan.to_dict(), "params": good_plan.to_dict()["params"][:3]})
    n = len(list(model.named_parameters()))
    with pytest.raises(PlanFileError, match=f"lists 3 parameters .* has {n}"):
        truncated.check_matches_model(model)


def test_train_refuses_a_truncated_params_list(tmp_path, capsys, good_plan):
    d = good_plan.to_dict()
    d["params"] = d["params"][:3]
    code, _, err = run(capsys, "train", "--plan", _write(tmp_path, d), "--steps", "1")
    assert code == 2 and "PlanFileError" in err and "missing" in err


@pytest.mark.parametrize(("field", "value"), [("batch_size", True), ("budget_bytes", 10)])
def test_train_refuses_a_hand_edited_plan(tmp_path, capsys, good_plan, field, value):
    d = _edit(good_plan.to_dict(), field, value)
    code, _, err = run(capsys, "train", "--plan", _write(tmp_path, d), "--steps", "1")
    assert code == 2 and "PlanFileError" in err and field in err


# -- the model a plan names runs only when the user vouches for it ------------------------------

USER_MODEL = textwrap.dedent("""
    import pathlib, torch, torch.nn as nn
    pathlib.Path({marker!r}).write_text("imported")

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.head = nn.Linear(4, 10)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))

    def factory():
        return Tiny(), torch.randn(1, 1, 28, 28)
""")


@pytest.fixture
def user_plan(tmp_path, capsys):
    """A model file that leaves a marker when imported, and a plan made for it."""
    marker = tmp_path / "imported.txt"
    model_file = tmp_path / "user_model.py"
    model_file.write_text(USER_MODEL.format(marker=str(marker)))
    spec = f"{model_file}:factory"
    plan_file = tmp_path / "plan.json"
    code, _, err = run(capsys, "plan", "--model", spec, "--device", "nrf52840", "-o", plan_file)
    assert code == 0, err
    marker.unlink()  # planning imported it (the user named it); from here on nobody has
    return plan_file, model_file, spec, marker


def _train(capsys, plan_file, *extra):
    return run(capsys, "train", "--plan", plan_file, "--data", "digits:0-4", "--steps", "1", *extra)


def test_plan_records_the_model_files_sha256(user_plan):
    import hashlib

    plan_file, model_file, _, _ = user_plan
    d = json.loads(plan_file.read_text())
    assert d["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()


def test_train_never_imports_a_plans_model_file_unasked(capsys, user_plan):
    plan_file, _, spec, marker = user_plan
    code, _, err = _train(capsys, plan_file)
    assert code == 2 and "UntrustedPlanError" in err and "--trust-plan" in err
    assert not marker.exists()  # no code of the plan's ran


def test_train_runs_the_model_the_user_names(capsys, user_plan):
    plan_file, _, spec, marker = user_plan
    code, _, err = _train(capsys, plan_file, "--model", spec, "--json")
    assert code == 0, err and marker.exists()


def test_a_plan_made_with_a_relative_model_spec_trains_from_another_directory(
    capsys, user_plan, tmp_path, monkeypatch
):
    # Prepare: plan `user_model.py:factory` from the model's own directory
    _, model_file, _, _ = user_plan
    monkeypatch.chdir(model_file.parent)
    rel_plan = model_file.parent / "rel-plan.json"
    code, _, err = run(
        capsys, "plan", "--model", "user_model.py:factory", "--device", "nrf52840", "-o", rel_plan
    )
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # Execute
    code, _, err = _train(capsys, rel_plan, "--trust-plan", "--json")
    # Assert: the plan recorded the file's absolute path
    assert code == 0, err
    assert json.loads(rel_plan.read_text())["model"] == f"{model_file.resolve()}:factory"


def test_a_plan_copied_with_its_model_file_finds_it_beside_the_plan(capsys, user_plan, tmp_path):
    # Prepare: plan and model file moved together to another folder; the original is gone
    plan_file, model_file, _, _ = user_plan
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "plan.json").write_text(plan_file.read_text())
    (moved / model_file.name).write_text(model_file.read_text())
    model_file.unlink()
    # Execute
    code, _, err = _train(capsys, moved / "plan.json", "--trust-plan", "--json")
    # Assert: found beside the plan, its SHA-256 checked
    assert code == 0, err
    (moved / model_file.name).write_text(model_file.name and "# edited\n")
    code, _, err = _train(capsys, moved / "plan.json", "--trust-plan")
    assert code == 2 and "UntrustedPlanError" in err and "SHA-256" in err


def test_trust_plan_still_needs_the_planned_files_hash(capsys, user_plan):
    # Prepare: the model file changed after planning
    plan_file, model_file, spec, marker = user_plan
    model_file.write_text(model_file.read_text() + "\nprint('changed')\n")
    # Execute
    trusted = _train(capsys, plan_file, "--trust-plan")
    named = _train(capsys, plan_file, "--model", spec)
    # Assert: refused both ways before anything was imported
    for code, _, err in (trusted, named):
        assert code == 2 and "UntrustedPlanError" in err and "SHA-256" in err
    assert not marker.exists()


def test_a_plan_whose_model_hash_was_removed_is_not_trusted(capsys, user_plan):
    plan_file, _, spec, marker = user_plan
    d = json.loads(plan_file.read_text())
    d["model_sha256"] = None
    plan_file.write_text(json.dumps(d))
    code, _, err = _train(capsys, plan_file, "--trust-plan")
    assert code == 2 and "UntrustedPlanError" in err and not marker.exists()


def test_naming_another_model_than_the_plans_is_refused(capsys, user_plan):
    plan_file, _, _, marker = user_plan
    code, _, err = _train(capsys, plan_file, "--model", "mcu-cnn")
    assert code == 2 and "PlanFileError" in err and "mcu-cnn" in err and not marker.exists()


# -- `edgetrain plan`: bounds from the device -------------------------------------------------


def test_budget_above_the_device_names_it_and_the_flag(capsys):
    code, _, err = run(
        capsys,
        "plan",
        "--model",
        "mcu-cnn",
        "--device",
        "nrf52840",
        "--budget",
        "10MB",
        "--batch-size",
        "64",
    )
    assert code == 2 and "DeviceLimitError" in err
    assert "nrf52840" in err and f"{NRF_RAM:,}" in err and "--force-budget" in err


def test_a_forced_budget_is_planned_and_recorded(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code, _, err = run(
        capsys,
        "plan",
        "--model",
        "mcu-cnn",
        "--device",
        "nrf52840",
        "--budget",
        "1MB",
        "--force-budget",
        "-o",
        out,
    )
    assert code == 0, err
    p = Plan.load(out)
    assert p.budget_forced and p.budget_bytes == 1024 * 1024


def test_a_batch_whose_inputs_alone_exceed_the_budget_is_refused(capsys):
    code, _, err = run(
        capsys, "plan", "--model", "mcu-cnn", "--device", "nrf52840", "--batch-size", "1000000000"
    )
    assert code == 2 and "DeviceLimitError" in err and "Traceback" not in err
    assert f"--batch-size {NRF_RAM // MCU_CNN_SAMPLE}" in err  # the largest batch that could fit


def test_the_api_refuses_such_a_batch_before_capturing_it():
    model, x = build_model("mcu-cnn", pretrained=False)
    with pytest.raises(edgetrain.PlanInfeasibleError, match="input batch alone"):
        edgetrain.plan(model, x, device="nrf52840", batch_size=10**9)


def test_a_missed_deadline_is_reported_as_the_deadline(capsys):
    code, _, err = run(
        capsys,
        "plan",
        "--model",
        "mcu-cnn",
        "--device",
        "nrf52840",
        "--strategy",
        "exact",
        "--deadline-s",
        "1e-6",
    )
    assert code == 2 and "PlanInfeasibleError" in err
    assert "deadline of 1e-06 s" in err and "smallest achievable peak" not in err
    fastest = float(re.search(r"takes ([0-9.e+-]+) s", err)[1])
    assert fastest > 1e-6


def test_policy_last_zero_says_k_must_be_positive(capsys):
    code, _, err = run(
        capsys, "plan", "--model", "mcu-cnn", "--device", "nrf52840", "--policy", "last:0"
    )
    assert code == 2 and "K must be positive" in err and "no executor fits" not in err


def test_a_policy_naming_no_parameter_is_an_argument_error_not_a_fit():
    model, x = build_model("mcu-cnn", pretrained=False)
    with pytest.raises(InvalidArgumentError, match="'nothing.here' names no parameter") as e:
        edgetrain.plan(model, x, device="nrf52840", policy="features.0.0,nothing.here")
    assert not isinstance(e.value, edgetrain.PlanInfeasibleError)


@pytest.mark.parametrize("policy", ["last:0", "last:-1", "last:x", "", "a,,b"])
def test_plan_request_checks_the_policy(policy):
    with pytest.raises(InvalidArgumentError, match="policy"):
        edgetrain.PlanRequest(policy=policy)


# -- files given to `train` -------------------------------------------------------------------


@pytest.fixture
def plan_file(tmp_path, good_plan) -> Path:
    return _write(tmp_path, good_plan.to_dict())


def _weights(tmp_path: Path, kind: str) -> Path:
    model, _ = build_model("mcu-cnn", pretrained=False)
    state = model.state_dict()
    p = tmp_path / f"{kind}.safetensors"
    if kind == "pickle":
        torch.save(state, p)
    elif kind == "truncated":
        save_file(state, str(p))
        p.write_bytes(p.read_bytes()[:200])
    elif kind == "wrong-keys":
        save_file({"foo": torch.zeros(3)}, str(p))
    elif kind == "wrong-shape":
        k = next(iter(state))
        save_file({**state, k: torch.zeros(7)}, str(p))
    elif kind == "nan":
        k = next(iter(state))
        save_file({**state, k: torch.full_like(state[k], float("nan"))}, str(p))
    return p


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("missing", "does not exist"),
        ("pickle", "pickle"),
        ("truncated", "truncated"),
        ("wrong-keys", "foo"),
        ("wrong-shape", "(7,)"),
        ("nan", "NaN"),
    ],
)
def test_weights_that_are_not_the_models_are_a_weights_file_error(
    tmp_path, capsys, plan_file, kind, says
):
    weights = _weights(tmp_path, kind)
    code, _, err = run(capsys, "train", "--plan", plan_file, "--weights", weights, "--steps", "1")
    assert code == 2 and "WeightsFileError" in err and says in err and "Traceback" not in err


@pytest.mark.parametrize("where", ["dir", "under-a-file"])
def test_output_paths_are_checked_before_planning(tmp_path, capsys, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path if where == "dir" else tmp_path / "f" / "plan.json"
    code, _, err = run(capsys, "plan", "--model", "mcu-cnn", "--device", "nrf52840", "-o", out)
    assert code == 2 and "OutputPathError" in err


def test_an_unexpected_os_error_is_one_line_and_exit_2(capsys, monkeypatch):
    import edgetrain.cli as cli

    def boom(args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "_cmd_devices", boom)
    code, _, err = run(capsys, "devices")
    assert code == 2 and err.strip() == "error: OSError: [Errno 28] No space left on device"


# -- property-based: random mutations never crash and never slip through ------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=4,
)


def _paths(node, prefix=()):
    """Every path (a tuple of keys / indices) into a JSON tree, the root excluded."""
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


def _apply(d, path, op, value):
    d = copy.deepcopy(d)
    node = d
    for k in path[:-1]:
        node = node[k]
    last = path[-1]
    if op == "delete":
        del node[last]
    elif op == "add" and isinstance(node, dict):
        node[f"x{value!r}"[:8]] = value
    else:
        node[last] = value
    return d


_ENUMS = {
    "strategy": {"exact", "auto", "keep-all", "sqrt", "greedy"},
    "objective": {"time", "energy"},
    "executor": {"pytorch", "c"},
    "precision": {"fp32", "int8"},
    "optimizer": {"sgd", "momentum", "adam"},
}


def _one_of(v, allowed) -> bool:
    return type(v) is str and v in allowed


def _is_int(v, lo):
    return type(v) is int and v >= lo


def _is_num(v, lo=0.0, positive=False):
    return type(v) in (int, float) and math.isfinite(v) and (v > lo if positive else v >= lo)


def _has_nul(v) -> bool:
    if isinstance(v, str):
        return "\0" in v
    if isinstance(v, dict):
        return any(_has_nul(k) or _has_nul(x) for k, x in v.items())
    if isinstance(v, list):
        return any(_has_nul(x) for x in v)
    return False


def _oracle_valid(d) -> bool:
    """Independent statement of a valid plan (the issue's rules), for plans on the nRF52840."""
    keys = {
        "model", "device", "strategy", "objective", "budget_bytes", "batch_size",
        "micro_batch_size", "optimizer", "in_place_update", "params", "stages", "predicted",
        "deadline_s", "freeze_batch_norm", "executor", "precision", "schema_version", "notes",
        "budget_forced", "model_sha256", "loss", "input_shape", "input_dtype",
        "predicted_peak_bytes", "weight_decay", "schedule", "lean_backward",
        "plain_activations", "lora_rank", "lora_modules", "in_place_activations",
        "chunked_modules",
    }  # fmt: skip
    optional = {"deadline_s", "predicted_peak_bytes", "lean_backward", "plain_activations"}
    optional |= {"lora_rank", "lora_modules", "in_place_activations", "chunked_modules"}
    if _has_nul(d):  # every string of a plan file is read without NUL characters
        return False
    if not isinstance(d, dict) or not keys - optional <= set(d) <= keys:
        return False
    if type(d.get("lean_backward", False)) is not bool:
        return False
    for key in ("plain_activations", "lora_modules", "in_place_activations"):
        sites = d.get(key, [])
        if not isinstance(sites, list) or not all(
            type(v) is str and len(v) <= 1024 and "\0" not in v for v in sites
        ):
            return False
    chunks = d.get("chunked_modules", [])
    if not isinstance(chunks, list) or not all(
        isinstance(c, list)
        and len(c) == 2
        and type(c[0]) is str
        and 0 < len(c[0]) <= 1024
        and _is_int(c[1], 1)
        and d.get("lean_backward") is True
        and d.get("in_place_update") is False
        and _is_int(d.get("micro_batch_size"), 1)
        and d["micro_batch_size"] % c[1] == 0
        for c in chunks
    ):
        return False
    rank = d.get("lora_rank", 0)
    if not _is_int(rank, 0) or rank > 4096 or (rank > 0) != bool(d.get("lora_modules", [])):
        return False
    if d["schema_version"] != 3 or type(d["schema_version"]) is not int:
        return False
    loss = d.get("loss", "cross-entropy")
    if not (
        loss in ("cross-entropy", "mse", "bce", "l1", "smooth-l1")
        or (
            type(loss) is str
            and loss.startswith("custom:")
            and 0 < len(loss) - 7 <= 200
            and loss[7:].isprintable()
            and loss.strip() == loss
        )
    ):
        return False
    wd, sched = d["weight_decay"], d["schedule"]
    if type(wd) not in (int, float) or not (math.isfinite(wd) and 0 <= wd < 1):
        return False
    if not (
        type(sched) is str
        and re.fullmatch(
            r"(warmup:[1-9][0-9]*\+)?(constant|cosine|step:[1-9][0-9]*:[0-9.e-]+)", sched
        )
    ):
        return False
    if d["executor"] == "c" and (wd or sched != "constant"):
        return False
    shape, dtype = d.get("input_shape"), d.get("input_dtype")
    if (shape, dtype) != (None, None) and not (
        isinstance(shape, list)
        and len(shape) <= 8
        and all(_is_int(n, 1) for n in shape)
        and type(dtype) is str
        and re.fullmatch(r"(float|bfloat|int|uint|bool|complex)[0-9]{0,3}", dtype)
    ):
        return False
    if not all(_one_of(d[k], vals) for k, vals in _ENUMS.items()):
        return False
    if not all(
        type(d[k]) is bool for k in ("in_place_update", "freeze_batch_norm", "budget_forced")
    ):
        return False
    model = d["model"]
    if not (type(model) is str and model and "\0" not in model and len(model) <= 4096):
        return False
    if d["device"] != "nrf52840":
        return False
    if d["model_sha256"] is not None:
        return False  # only a 64-hex-digit string would do; mutations never make one
    b, mb, budget = d["batch_size"], d["micro_batch_size"], d["budget_bytes"]
    if not (_is_int(b, 1) and _is_int(mb, 1) and _is_int(budget, 1) and b % mb == 0):
        return False
    if budget > NRF_RAM and not d["budget_forced"]:
        return False
    pr = d["predicted"]
    if not isinstance(pr, dict) or set(pr) != {
        "peak_bytes", "storage_bytes_written", "latency_s", "energy_j", "timeline"
    }:  # fmt: skip
        return False
    if not (_is_int(pr["peak_bytes"], 0) and _is_int(pr["storage_bytes_written"], 0)):
        return False
    if "predicted_peak_bytes" in d and not (
        type(d["predicted_peak_bytes"]) is int and d["predicted_peak_bytes"] == pr["peak_bytes"]
    ):
        return False
    if not (_is_num(pr["latency_s"]) and _is_num(pr["energy_j"]) and pr["peak_bytes"] <= budget):
        return False
    if not isinstance(pr["timeline"], list) or not all(
        isinstance(t, dict) and set(t) == {"event", "live_bytes"} and type(t["event"]) is str
        and _is_int(t["live_bytes"], 0)
        for t in pr["timeline"]
    ):  # fmt: skip
        return False
    ps = d["params"]
    if not isinstance(ps, list) or not ps:
        return False
    names = []
    for q in ps:
        if not isinstance(q, dict) or set(q) != {"name", "decision", "channel_ratio"}:
            return False
        decisions = {"frozen", "trainable", "bias_only", "channels"}
        if type(q["name"]) is not str or not q["name"] or not _one_of(q["decision"], decisions):
            return False
        r = q["channel_ratio"]
        if not (_is_num(r, positive=True) and r <= 1) or (q["decision"] != "channels" and r != 1):
            return False
        names.append(q["name"])
    if len(set(names)) != len(names):
        return False
    for s in d["stages"] if isinstance(d["stages"], list) else [None]:
        if not isinstance(s, dict) or set(s) != {"name", "modules", "decision"}:
            return False
        if type(s["name"]) is not str or not _one_of(s["decision"], {"keep", "recompute", "page"}):
            return False
        if not isinstance(s["modules"], list) or any(type(m) is not str for m in s["modules"]):
            return False
    if d["in_place_update"] and mb != b:
        return False
    dl = d.get("deadline_s")
    if dl is not None and not (_is_num(dl, positive=True) and pr["latency_s"] <= dl):
        return False
    if not isinstance(d["notes"], list) or any(type(n) is not str for n in d["notes"]):
        return False
    if d["precision"] == "int8" and d["executor"] != "c":
        return False
    if d["executor"] == "c" and (
        mb != b
        or d["optimizer"] != "sgd"
        or not d["in_place_update"]
        or any(s["decision"] != "keep" for s in d["stages"])
    ):
        return False
    return True


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_plans_load_only_when_valid(good_plan, data):
    # Prepare: a valid plan, one field replaced, deleted or added at random
    d = good_plan.to_dict()
    path = data.draw(st.sampled_from(list(_paths(d))))
    op = data.draw(st.sampled_from(["set", "delete", "add"]))
    value = data.draw(JSON_VALUES)
    mutated = _apply(d, path, op, value)
    # Execute
    try:
        plan = Plan.from_dict(mutated)
    except PlanFileError:
        event("refused")
        # Assert: a refusal is of a plan the oracle calls invalid
        assert not _oracle_valid(mutated), f"refused a valid plan: {path} {op} {value!r}"
        return
    event("accepted")
    # Assert: accepted only what the oracle accepts, and nothing was coerced
    assert _oracle_valid(mutated), f"accepted an invalid plan: {path} {op} {value!r}"
    defaults = {"deadline_s": None, "loss": "cross-entropy", "lean_backward": False}
    defaults |= {"plain_activations": [], "lora_rank": 0, "lora_modules": []}
    defaults |= {"input_shape": None, "input_dtype": None, "in_place_activations": []}
    defaults |= {"chunked_modules": []}
    derived = {"predicted_peak_bytes": mutated["predicted"]["peak_bytes"]}
    assert plan.to_dict() == {**defaults, **mutated, **derived}


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_corrupted_plan_text_is_a_plan_file_error_or_a_valid_plan(good_plan, data):
    text = good_plan.to_json()
    i = data.draw(st.integers(0, len(text)))
    j = data.draw(st.integers(i, min(len(text), i + 8)))
    junk = data.draw(st.text(max_size=4))
    broken = text[:i] + junk + text[j:]
    try:
        plan = Plan.from_json(broken)
    except PlanFileError:
        return
    assert _oracle_valid(json.loads(broken))
    assert isinstance(plan, Plan)


# -- device files ------------------------------------------------------------------------------

DEVICE_TEXT = (Path(cost.__file__).parent / "devices" / "nrf52840.toml").read_text()
TOML_VALUES = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda f: (
            "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf") if math.isinf(f) else repr(f)
        )
    ),
    st.sampled_from(
        [
            "true",
            "false",
            '""',
            '"x"',
            "[]",
            "[1, 2]",
            "{}",
            "1979-05-27",
            "0x10",
            "1_000",
            "1e3",
            "'''a'''",
        ]
    ),
    st.text(max_size=10).map(json.dumps),
)


def _device_ok(dev) -> bool:
    """Independent ranges of the schema (edgetrain/cost/_device.py's docstring and table)."""
    st_, c = dev.storage, dev.compute
    nums = [
        c.clock_hz, c.fp32_flops_per_s, c.int8_ops_per_s, c.active_power_w, c.idle_power_w,
        st_.read_bandwidth_bytes_per_s, st_.write_bandwidth_bytes_per_s, st_.transfer_latency_s,
    ]  # fmt: skip
    return (
        type(dev.ram_bytes) is int
        and 1024 <= dev.ram_bytes <= 1e13
        and type(dev.flash_bytes) is int
        and dev.flash_bytes >= 0
        and type(st_.capacity_bytes) is int
        and all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in nums)
        and c.active_power_w > 0
        and c.idle_power_w <= c.active_power_w
        and bool(dev.name)
        and re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", dev.name) is not None
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_device_files_load_only_when_valid(data):
    lines = DEVICE_TEXT.splitlines()
    fields = [i for i, line in enumerate(lines) if re.match(r"\s*\w+\s*=", line)]
    i = data.draw(st.sampled_from(fields))
    op = data.draw(st.sampled_from(["value", "delete", "duplicate", "garbage"]))
    key = lines[i].split("=")[0].strip()
    if op == "value":
        lines[i] = f"{key} = {data.draw(TOML_VALUES)}"
    elif op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(i, lines[i])
    else:
        lines.insert(i, data.draw(st.text(max_size=12)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "board.toml"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        try:
            dev = load_device(path)
        except (DeviceFileError, UnknownDeviceError):
            event("refused")
            return
    event("accepted")
    assert _device_ok(dev)
    assert type(dev).from_dict(dev.to_dict()) == dev


# -- data specs ----------------------------------------------------------------------------------

SPEC_TEXT = st.one_of(
    st.text(alphabet="fashion-mnistdigt:0123456789,- \t３٣", max_size=24),
    st.builds(
        lambda n, rest: f"{n}:{rest}",
        st.sampled_from(["fashion-mnist", "digits", "Digits", "mnist"]),
        st.text(alphabet="0123456789,- ３٣", max_size=16),
    ),
    st.text(max_size=16),
)


def _spec_oracle(spec: str):
    """What the spec means, computed independently, or None when it is invalid."""
    name, sep, rest = spec.strip().partition(":")
    if name.strip() not in ("fashion-mnist", "digits"):
        return None
    if not sep:
        return name.strip(), tuple(range(10))
    classes = set()
    for item in rest.split(","):
        m = re.fullmatch(r"([0-9]{1,9})(?:-([0-9]{1,9}))?", item.strip(), re.ASCII)
        if m is None:
            return None
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo or hi > 9:
            return None
        classes |= set(range(lo, hi + 1))
    return name.strip(), tuple(sorted(classes))


@settings(max_examples=500, deadline=None)
@given(spec=SPEC_TEXT)
def test_data_specs_parse_only_when_valid(spec):
    want = _spec_oracle(spec)
    try:
        got = parse_spec(spec)
    except InvalidArgumentError:
        event("refused")
        assert want is None, f"refused the valid spec {spec!r}"
        return
    event("accepted")
    assert got == want, f"{spec!r} parsed as {got}, the oracle says {want}"


def test_a_spec_with_thousands_of_digits_is_an_invalid_argument():
    with pytest.raises(InvalidArgumentError):
        parse_spec("fashion-mnist:" + "1" * 5000)


def test_every_error_here_is_an_edgetrain_error():
    assert issubclass(PlanFileError, EdgetrainError) and issubclass(
        UntrustedPlanError, PlanFileError
    )
