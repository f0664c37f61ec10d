"""An exported folder read back is untrusted input (NOTE [ An exported folder is untrusted
input ], edgetrain/export/_manifest.py): every malformed manifest and every changed program
byte is a typed error. No ExecuTorch run is needed: the checks come before it."""

import copy
import hashlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgetrain.errors import ExportManifestError, OutputPathError
from edgetrain.export import manifest_of
from edgetrain.export._manifest import PROGRAM_FILES, parse_manifest, verify_files


def _folder(tmp_path, payloads=(b"pte bytes", b"ptd bytes")):
    files = {}
    for name, data in zip(PROGRAM_FILES, payloads):
        (tmp_path / name).write_bytes(data)
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {
        "format": "executorch",
        "method": "forward",
        "files": files,
        "inputs": [{"name": "x", "shape": [8, 1, 28, 28]}, {"name": "y", "shape": [8]}],
        "optimizer": {
            "name": "sgd",
            "lr": 0.05,
            "momentum": 0.0,
            "dampening": 0.0,
            "weight_decay": 0.0,
            "nesterov": False,
        },
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_a_written_folder_reads_back_and_a_changed_byte_is_refused(tmp_path):
    # Prepare
    manifest = _folder(tmp_path)
    # Execute / Assert: as written, it reads back and verifies
    assert manifest_of(tmp_path) == manifest
    verify_files(tmp_path, manifest)
    # one byte changed, then a truncated file, then a missing one
    (tmp_path / "model.pte").write_bytes(b"pte bytez")
    with pytest.raises(ExportManifestError, match="model.pte.*SHA-256"):
        verify_files(tmp_path, manifest)
    (tmp_path / "model.pte").write_bytes(b"pte")
    with pytest.raises(ExportManifestError, match="3 bytes"):
        verify_files(tmp_path, manifest)
    (tmp_path / "model.pte").unlink()
    with pytest.raises(OutputPathError, match="missing"):
        verify_files(tmp_path, manifest)


def test_a_manifest_that_is_not_json_or_absent_is_a_typed_error(tmp_path):
    # Prepare / Execute / Assert
    with pytest.raises(OutputPathError, match="not an export manifest"):
        manifest_of(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "executorch", ')
    with pytest.raises(ExportManifestError, match="not JSON"):
        manifest_of(tmp_path)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


def _paths(d, prefix=()):
    yield prefix
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _paths(v, (*prefix, i))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_manifests_parse_or_fail_typed(tmp_path_factory, data):
    # Prepare: a valid manifest with one field replaced by an arbitrary JSON value or deleted
    good = _folder(tmp_path_factory.mktemp("m"))
    paths = [p for p in _paths(good) if p]
    path = data.draw(st.sampled_from(paths))
    mutated = copy.deepcopy(good)
    parent = mutated
    for k in path[:-1]:
        parent = parent[k]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_JSON)
    # Execute / Assert: the parser returns the manifest unchanged or raises its typed error
    try:
        out = parse_manifest(mutated, tmp_path_factory.getbasetemp() / "manifest.json")
    except ExportManifestError as e:
        assert "edgetrain export" in str(e)
        return
    assert out == mutated
    assert out["format"] == "executorch" and out["optimizer"]["lr"] > 0
    for name in PROGRAM_FILES:
        assert len(out["files"][name]["sha256"]) == 64
