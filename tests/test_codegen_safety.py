"""Generated C and the compile / mcu-run commands against untrusted input (issue 16): names
from the model that are C syntax (NOTE [ Names in generated C ]), output directories that
hold a user's files (NOTE [ compile's output directory ]), plans edited by hand, weights,
build files and arguments that are not what they claim. Oracles: the C compiler and the
program's own output, PyTorch's Trainer and int8 simulation, the files on disk."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import subprocess

import numpy as np
import pytest
import torch
import torch.nn as nn
from _int8_oracle import assert_int8_params_equal_simulation
from _toolchain import needs_cc
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codegen import _plan, _samples, check_model_against_torch

import edgetrain
from edgetrain.capture import capture
from edgetrain.cli import main
from edgetrain.codegen import (
    Int8Spec,
    SampleSet,
    TrainingSpec,
    compile_int8_project,
    compile_project,
    lower,
    mcu_run,
    render,
    render_int8,
    weights_of,
)
from edgetrain.codegen._files import MARKER
from edgetrain.codegen._names import (
    C_KEYWORDS,
    Identifiers,
    c_comment,
    c_identifier,
    c_string,
    wire_name,
    wire_name_decode,
)
from edgetrain.errors import (
    BuildFileError,
    DeviceLimitError,
    InvalidArgumentError,
    OutputPathError,
    PlanPredictionError,
    UnsupportedPlanError,
)
from edgetrain.models import build_model
from edgetrain.quant import QuantModel, QuantSGD, WeightStorage, quantize

# the demonstration: closes the comment the name is pasted into, defines a function
# that runs before main() and exits with 3, and reopens a comment to swallow the rest
INJECTION = "*/ __attribute__((constructor)) static void pwn(void){et_exit(3);} /*"
NASTY = [INJECTION, 'q"uote', "back\\slash", "new\nline", "ñame²", "why??/", "int", "0digit"]
C_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")


class _Named(nn.Module):
    """conv -> BN -> ReLU -> pool -> a chain of linears, every module named with C syntax;
    `x.y` and `x_y` sanitise to the same identifier."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict()
        self.blocks[INJECTION] = nn.Conv2d(1, 4, 3, padding=1)
        self.blocks['q"uote'] = nn.BatchNorm2d(4)
        self.blocks["back\\slash"] = nn.ReLU()
        self.head = nn.ModuleDict()
        for name, (i, o) in {
            "new\nline": (4, 8),
            "ñame²": (8, 8),
            "why??/": (8, 8),
            "int": (8, 8),
            "0digit": (8, 8),
            "x_y": (8, 8),
        }.items():
            self.head[name] = nn.Linear(i, o)
        self.x = nn.ModuleDict({"y": nn.Linear(8, 10)})

    def forward(self, x):
        for m in self.blocks.values():
            x = m(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        for m in self.head.values():
            x = torch.relu(m(x))
        return self.x["y"](x)


def _named_model():
    torch.manual_seed(0)
    m, x = _Named(), torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        bn = m.blocks['q"uote']
        bn.running_mean.copy_(torch.linspace(-0.2, 0.2, 4))
        bn.running_var.copy_(torch.linspace(0.5, 1.5, 4))
    return m, x


def _lex_c(text: str) -> tuple[str, list[str], list[str]]:
    """C text -> (code outside comments and literals, comment bodies, literal bodies); the
    literals and comments must close."""
    code, comments, strings, i = [], [], [], 0
    while i < len(text):
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            assert end >= 0, "unterminated comment"
            comments.append(text[i + 2 : end])
            i = end + 2
        elif text.startswith("//", i):
            end = text.find("\n", i)
            comments.append(text[i + 2 : end])
            i = end
        elif text[i] in "\"'":
            q, j = text[i], i + 1
            while text[j] != q:
                assert text[j] != "\n", f"literal crosses a line: {text[i : j + 1]!r}"
                j += 2 if text[j] == "\\" else 1
            strings.append(text[i + 1 : j])
            code.append(" ")
            i = j + 1
        else:
            code.append(text[i])
            i += 1
    return "".join(code), comments, strings


# -- names -------------------------------------------------------------------------------------
def test_rendered_project_holds_model_names_only_escaped():
    # Prepare: a plan that trains everything, so every name reaches a comment and a dump string
    m, x = _named_model()
    plan = _plan(m, x, "all", 1, "named")
    s = _samples(2, (1, 8, 8))
    # Execute
    files = render(
        plan,
        capture(m, x, name="named"),
        weights_of(m),
        "cortex-m4",
        TrainingSpec(s, s, steps=1, lr=0.01, dump_params=True),
        device_sram_bytes=1 << 20,
        device_flash_bytes=1 << 20,
    )
    # Assert: ASCII only; the payload is no code (a sanitised identifier may spell its words,
    # `..._constructor___static_...`, as one token); comments and literals close on
    # their line; every parameter's name is printed exactly (decoded from its literal)
    printed = []
    for name, text in files.items():
        assert text.isascii(), name
        if name.endswith((".c", ".h", ".ld")):
            code, comments, strings = _lex_c(text)
            assert not re.search(r"\bpwn\b|\bconstructor\b|et_exit\(3\)", code), name
            assert not any("/*" in c for c in comments), name
            printed += [wire_name_decode(v) for v in strings if "%" in v or "." in v]
    assert set(plan.trainable()) <= set(printed)


def test_names_that_sanitise_alike_stay_distinct_c_arrays():
    # Prepare: `x.y.*` and `head.x_y.*` differ; so do names that differ only in punctuation
    m, x = _named_model()
    plan = _plan(m, x, "all", 1, "named")
    # Execute
    low = lower(plan, capture(m, x, name="named"), weights_of(m))
    # Assert: one array per parameter, each a valid, distinct C identifier
    syms = [a.symbol for a in low.arrays]
    assert len(set(syms)) == len(syms)
    assert {a.param for a in low.arrays if a.trainable} == set(plan.trainable())
    for s in syms:
        assert C_IDENTIFIER.fullmatch(s) and s not in C_KEYWORDS, s


@needs_cc
def test_names_with_c_syntax_build_run_and_train_like_pytorch(tmp_path):
    # Prepare / Execute / Assert: the program builds, is not hijacked (the injected
    # constructor would exit with 3 before main), and its trained parameters, reported under
    # the model's exact names, equal PyTorch's after the same SGD steps
    m, x = _named_model()
    plan = _plan(m, x, "all", 1, "named")
    res, _ = check_model_against_torch(tmp_path, m, x, plan, steps=4)
    assert set(res.params) == set(plan.trainable())
    assert any(INJECTION in k for k in res.params)


@needs_cc
def test_int8_layers_with_c_syntax_names_train_bit_exactly(tmp_path):
    # Prepare: an int8 graph (its op names come from a graph file, so from anywhere), its
    # layers renamed to C syntax, two of them to names that sanitise alike
    m, x = build_model("mcu-cnn", pretrained=False)
    m.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        m.classifier.weight.normal_(0, 0.3, generator=g)
    qg = quantize(m, torch.randn(8, *x.shape[1:], generator=g), name="mcu-cnn")
    names = [op.name for op in qg.weighted_ops]
    new = dict(zip(names, [INJECTION, 'q"uote\\', "x y", "x_y", "new\nline ñ"], strict=False))
    renamed = dataclasses.replace(
        qg,
        ops=tuple(
            dataclasses.replace(op, name=new[op.name]) if op.name in new else op for op in qg.ops
        ),
    )
    trained = [names[2], names[3], names[-1]]
    xs, ys = torch.randn(6, *x.shape[1:], generator=g), torch.randint(0, 10, (6,), generator=g)
    q = qg.quantize_input(xs).numpy()
    files = render_int8(
        renamed,
        [new.get(n, n) for n in trained],
        "host",
        Int8Spec(q, ys.numpy(), q, ys.numpy(), steps=3, lr=0.05, dump_params=True),
    )
    out = tmp_path / "int8"
    out.mkdir()
    for k, v in files.items():
        (out / k).write_text(v)
    # Execute: the C program, and the PyTorch int8 simulation of the original graph
    res = mcu_run(out)
    qm = QuantModel(qg, trainable=trained, storage=WeightStorage.INT8)
    opt = QuantSGD(qm, lr=0.05, qas=True)
    for s in range(3):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(qm(xs[[s % 6]]), ys[[s % 6]]).backward()
        opt.step()
    # Assert: reported under the renamed names, bit-exact with the simulation
    back = {v: k for k, v in new.items()}
    assert set(res.params) == {new.get(n, n) for n in trained}
    res = dataclasses.replace(res, params={back.get(k, k): v for k, v in res.params.items()})
    assert_int8_params_equal_simulation(res, qm, qg)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_a_comment_holds_any_name_without_ending(text):
    c = c_comment(text)
    assert all(32 <= ord(ch) < 127 for ch in c)
    assert not set(c) & set('*/\\?"')
    assert wire_name_decode(c) == text  # percent-encoding: still readable, nothing lost


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_a_printed_name_is_one_token_that_decodes_to_the_name(text):
    w = wire_name(text)
    assert w.isascii() and w.isprintable() and w.split() == [w] or w == ""
    assert wire_name_decode(w) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=80), unique=True, max_size=12))
def test_identifiers_are_valid_distinct_and_deterministic(names):
    suffixes = ("_w", "_b", "_m0")

    def assign():
        ids = Identifiers({"q_lb"})
        return [ids.get(("layer", n), "q_" + n, suffixes) for n in names]

    got = assign()
    full = [p + s for p in got for s in suffixes]
    assert len(set(full)) == len(full) and "q_lb" not in full
    for ident in full:
        assert C_IDENTIFIER.fullmatch(ident) and ident not in C_KEYWORDS, ident
    assert assign() == got
    assert all(C_IDENTIFIER.fullmatch(c_identifier(n)) for n in names)


@needs_cc
def test_c_string_literals_hold_exactly_the_bytes_of_any_text(tmp_path):
    # Prepare: nasty names and random text (controls, quotes, backslashes, `?` trigraphs,
    # digits after escapes, non-ASCII), each as a literal the program writes out verbatim
    rng = random.Random(0)
    alphabet = "\\\"'?/*\n\t\r\0\x01\x7f 0123456789abcfxAF%é€𝄞"
    texts = NASTY + ["\x017", "\\x41", "??=??(??<", "\0end"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(200)]
    lits = "\n".join(f"static const char s{i}[] = {c_string(t)};" for i, t in enumerate(texts))
    calls = "\n".join(
        f'    printf("%u:", (unsigned)(sizeof s{i} - 1)); fwrite(s{i}, 1, sizeof s{i} - 1, stdout);'
        for i in range(len(texts))
    )
    src = tmp_path / "lits.c"
    src.write_text(f"#include <stdio.h>\n{lits}\nint main(void) {{\n{calls}\n    return 0;\n}}\n")
    exe = tmp_path / "lits"
    # Execute: -std=c99 enables trigraphs; -Werror turns any trigraph warning into a failure
    subprocess.run(
        ["cc", "-std=c99", "-Wall", "-Werror", "-o", str(exe), str(src)],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True).stdout
    # Assert
    got, i = [], 0
    while i < len(out):
        colon = out.index(b":", i)
        n = int(out[i:colon])
        got.append(out[colon + 1 : colon + 1 + n])
        i = colon + 1 + n
    assert got == [t.encode("utf-8") for t in texts]


# -- compile's output directory ----------------------------------------------------------------
def _tiny():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    )
    x = torch.randn(1, 1, 8, 8)
    return m, x, _plan(m, x, "last:2", 1, "tiny")


def _spec(n: int = 2) -> TrainingSpec:
    s = _samples(n, (1, 8, 8))
    return TrainingSpec(s, s, steps=1, lr=0.01)


def test_compile_refuses_a_directory_holding_a_users_main_c(tmp_path):
    # Prepare: the user's own project
    m, x, plan = _tiny()
    out = tmp_path / "mine"
    out.mkdir()
    (out / "main.c").write_text("int main(void) { return 42; }\n")
    # Execute / Assert: refused with the fix, and the user's file is untouched
    with pytest.raises(OutputPathError, match="--force") as e:
        compile_project(plan, m, x, "host", _spec(), out)
    assert "main.c" in str(e.value)
    assert os.listdir(out) == ["main.c"]
    assert (out / "main.c").read_text() == "int main(void) { return 42; }\n"


def test_compile_writes_again_into_its_own_directory_and_removes_only_its_stale_files(tmp_path):
    m, x, plan = _tiny()
    out = tmp_path / "proj"
    # Execute: a Cortex-M project, then the host one in the same directory
    compile_project(plan, m, x, "cortex-m4", _spec(), out, device="stm32h743")
    assert (out / MARKER).is_file() and (out / "link.ld").is_file()
    compile_project(plan, m, x, "host", _spec(), out)
    # Assert: the linker script the host project lacks is gone; the rest is the host project
    assert not (out / "link.ld").exists()
    assert json.loads((out / "edgetrain_build.json").read_text())["target"] == "host"
    # --force writes into a user's directory, never removing what compile did not write
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    (user / "link.ld").write_text("mine too")
    compile_project(plan, m, x, "host", _spec(), user, force=True)
    assert (user / "notes.txt").read_text() == "mine"
    assert (user / "link.ld").read_text() == "mine too"
    assert (user / "main.c").is_file()


def test_compile_refuses_an_output_path_that_is_a_file(tmp_path):
    m, x, plan = _tiny()
    f = tmp_path / "out"
    f.write_text("a file")
    with pytest.raises(OutputPathError, match="is a file"):
        compile_project(plan, m, x, "host", _spec(), f)
    with pytest.raises(OutputPathError, match="is a file"):  # --force never replaces a file
        compile_project(plan, m, x, "host", _spec(), f, force=True)
    assert f.read_text() == "a file"


# -- plans -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn():
    m, x = build_model("mcu-cnn", pretrained=False)
    return (
        m,
        x,
        edgetrain.plan(m, x, device="nrf52840", policy="last:2", executor="c", name="mcu-cnn"),
    )


def test_compile_refuses_a_c_plan_edited_to_another_batch_size(tmp_path, cnn):
    # Prepare: a plan for the C executor at batch 1, and the same file edited to batch 4
    m, x, plan = cnn
    edited = dataclasses.replace(plan, batch_size=4, micro_batch_size=4)
    s = _samples(8, tuple(x.shape[1:]))
    spec = TrainingSpec(s, s, steps=1, lr=0.01)
    # Execute / Assert: the plan as made compiles, its prediction being the layout's; the
    # edited one is refused before anything is written
    out = compile_project(plan, m, x, "host", spec, tmp_path / "ok")
    meta = json.loads((out / "edgetrain_build.json").read_text())
    assert meta["codegen_predicted_peak_sram_bytes"] == plan.predicted_peak_bytes
    with pytest.raises(PlanPredictionError, match="edited") as e:
        compile_project(edited, m, x, "host", spec, tmp_path / "edited")
    assert f"{plan.predicted_peak_bytes:,} B" in str(e.value)
    assert not (tmp_path / "edited").exists()


def test_compile_int8_refuses_an_int8_plan_edited_to_another_batch_size(tmp_path):
    m, x = build_model("mcu-cnn", pretrained=False)
    plan = edgetrain.plan(m, x, device="nrf52840", precision="int8", name="mcu-cnn")
    s = _samples(8, tuple(x.shape[1:]))
    out, _, _ = compile_int8_project(plan, m, s, s, "host", tmp_path / "ok", steps=1, lr=0.01)
    assert (out / "et_model.c").is_file()
    edited = dataclasses.replace(plan, batch_size=4, micro_batch_size=4)
    with pytest.raises(PlanPredictionError, match="edited"):
        compile_int8_project(edited, m, s, s, "host", tmp_path / "edited", steps=1, lr=0.01)
    assert not (tmp_path / "edited").exists()


def _cli(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_cli_compile_refuses_a_pytorch_plan_before_any_work(tmp_path, capsys, cnn):
    m, x, _ = cnn
    p = tmp_path / "plan.json"
    p.write_text(edgetrain.plan(m, x, device="nrf52840", policy="last:2").to_json())
    rc, err = _cli(["compile", "--plan", str(p), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and "PlanPredictionError" in err and "--executor c" in err
    assert not (tmp_path / "o").exists()


def test_cli_compile_refuses_a_users_directory(tmp_path, capsys, cnn):
    p = tmp_path / "plan.json"
    p.write_text(cnn[2].to_json())
    out = tmp_path / "o"
    out.mkdir()
    (out / "main.c").write_text("mine")
    rc, err = _cli(["compile", "--plan", str(p), "-o", str(out)], capsys)
    assert rc == 2 and "OutputPathError" in err and "--force" in err
    assert (out / "main.c").read_text() == "mine" and os.listdir(out) == ["main.c"]


# -- weights -----------------------------------------------------------------------------------
def _bad_weights(kind: str, path, model) -> None:
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if kind == "directory":
        path.mkdir()
    elif kind == "truncated":
        save_file(sd, str(path))
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "pickle":
        torch.save(sd, str(path))
    elif kind == "wrong keys":
        save_file({"nope": torch.zeros(3)}, str(path))
    elif kind == "wrong shape":
        k = next(iter(sd))
        save_file({**sd, k: torch.zeros(2, 2)}, str(path))
    elif kind == "nan":
        k = next(k for k, v in sd.items() if v.is_floating_point())
        sd[k].view(-1)[0] = float("nan")
        save_file(sd, str(path))


@pytest.mark.parametrize(
    "kind", ["missing", "directory", "truncated", "pickle", "wrong keys", "wrong shape", "nan"]
)
def test_cli_compile_refuses_bad_weights_before_any_work(tmp_path, capsys, cnn, kind):
    # Prepare
    m, _, plan = cnn
    p = tmp_path / "plan.json"
    p.write_text(plan.to_json())
    w = tmp_path / "w.safetensors"
    _bad_weights(kind, w, m)
    # Execute
    rc, err = _cli(
        ["compile", "--plan", str(p), "-o", str(tmp_path / "o"), "--weights", str(w)], capsys
    )
    # Assert: a typed error naming the file; nothing written
    assert rc == 2 and "WeightsFileError" in err and "w.safetensors" in err
    assert not (tmp_path / "o").exists()


# -- data --------------------------------------------------------------------------------------
def test_samples_larger_than_the_devices_flash_are_refused_before_writing(tmp_path):
    m, x, plan = _tiny()
    spec = _spec(64)
    need = 2 * 64 * (64 + 1)  # train + test pixels and labels; the weights come on top
    with pytest.raises(DeviceLimitError, match="--train-samples") as e:
        render(
            plan,
            capture(m, x, name="tiny"),
            weights_of(m),
            "cortex-m4",
            spec,
            device_sram_bytes=1 << 20,
            device_flash_bytes=need,
            device_name="tinyboard",
        )
    assert "tinyboard" in str(e.value) and f"{need:,} B" in str(e.value)


@pytest.mark.parametrize("label", [10, 300, -1])
def test_labels_that_are_not_classes_of_the_model_are_refused(tmp_path, label):
    m, x, plan = _tiny()
    g = np.random.default_rng(0)
    s = SampleSet(
        g.integers(0, 256, (3, 1, 8, 8), dtype=np.uint8), np.array([0, label, 1]), 0.5, 0.25
    )
    with pytest.raises(UnsupportedPlanError, match=f"label {label} "):
        compile_project(plan, m, x, "host", TrainingSpec(s, s, 1, 0.01), tmp_path / "o")
    assert not (tmp_path / "o").exists()


# -- mcu-run's inputs --------------------------------------------------------------------------
@pytest.fixture
def project(tmp_path):
    m, x, plan = _tiny()
    return compile_project(plan, m, x, "host", _spec(), tmp_path / "proj")


_BROKEN_BUILD_FILES = {
    "truncated": lambda t: t[: len(t) // 2],
    "a list": lambda t: "[1, 2]",
    "missing field": lambda t: json.dumps(
        {k: v for k, v in json.loads(t).items() if k != "arena_bytes"}
    ),
    "wrong type": lambda t: json.dumps({**json.loads(t), "sram_limit_bytes": "lots"}),
    "unknown target": lambda t: json.dumps({**json.loads(t), "target": "cray-1"}),
    "NaN": lambda t: t.replace('"arena_bytes": ', '"arena_bytes": NaN, "x": '),
    "empty": lambda t: "",
}


@pytest.mark.parametrize("kind", list(_BROKEN_BUILD_FILES))
def test_mcu_run_refuses_a_broken_build_file(project, capsys, kind):
    f = project / "edgetrain_build.json"
    f.write_text(_BROKEN_BUILD_FILES[kind](f.read_text()))
    with pytest.raises(BuildFileError, match="edgetrain compile") as e:
        mcu_run(project)
    assert "edgetrain_build.json" in str(e.value)
    rc, err = _cli(["mcu-run", str(project)], capsys)
    assert rc == 2 and "BuildFileError" in err
    assert not (project / "et_train").exists()  # refused before building


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "0"])
def test_mcu_run_refuses_a_timeout_that_is_not_a_positive_finite_number(project, capsys, timeout):
    with pytest.raises(InvalidArgumentError, match="--timeout-s"):
        mcu_run(project, timeout_s=float(timeout))
    with pytest.raises(SystemExit) as e:
        main(["mcu-run", str(project), "--timeout-s", timeout])
    assert e.value.code == 2 and "--timeout-s" in capsys.readouterr().err
    assert not (project / "et_train").exists()


def test_mcu_run_of_a_directory_that_is_not_a_project_says_how_to_make_one(tmp_path):
    with pytest.raises(BuildFileError, match="edgetrain compile"):
        mcu_run(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BuildFileError, match="is a file"):
        mcu_run(tmp_path / "file")
