"""Device catalog: every packaged file loads, the schema is validated, errors are actionable."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edgetrain.cost._device import (
    DEVICE_TABLE_HEADER,
    Accelerator,
    Device,
    MemoryClass,
    catalog,
    device_names,
    format_device_table,
    load_device,
)
from edgetrain.errors import DeviceFileError, UnknownDeviceError

DEVICES_DIR = Path(__file__).resolve().parents[1] / "edgetrain" / "cost" / "devices"
REQUIRED = [
    "samd21",
    "nrf52840",
    "stm32f746",
    "esp32",
    "stm32h743",
    "rpi-zero-2w",
    "rpi4",
    "jetson-nano",
    "jetson-tx2",
    "snapdragon-865",
]

GOOD = """\
name = "my-board"
display_name = "My custom board"
memory_class = "mcu"
source = "my own measurements, 2024"

[memory]
ram_bytes = 131072
flash_bytes = 524288

[storage]
kind = "sd-card-spi"
capacity_bytes = 8_000_000_000
read_bandwidth_bytes_per_s = 1.0e6
write_bandwidth_bytes_per_s = 0.8e6
transfer_latency_s = 1.0e-4
read_energy_j_per_byte = 3.0e-7
write_energy_j_per_byte = 4.0e-7
write_endurance_cycles = 1000

[compute]
clock_hz = 100e6
fp32_flops_per_s = 10e6
int8_ops_per_s = 50e6
active_power_w = 0.05
idle_power_w = 0.005
"""


def _write(tmp_path: Path, text: str, name: str = "board.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _bad_file_error(tmp_path: Path, old: str, new: str) -> str:
    """Write GOOD with one edit, load it, return the DeviceFileError message."""
    assert old in GOOD, old
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(DeviceFileError) as info:
        load_device(path)
    msg = str(info.value)
    assert str(path) in msg  # every message names the file
    return msg


# -- the packaged catalog ------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DEVICES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_catalog_file_loads_and_is_named_after_its_file(path):
    # Prepare / Execute
    dev = load_device(path)
    # Assert
    assert dev.name == path.stem
    assert dev.source.strip() and dev.display_name.strip()
    assert dev.compute.idle_power_w <= dev.compute.active_power_w
    assert dev.storage.read_bandwidth_bytes_per_s > 0
    assert dev.storage.write_bandwidth_bytes_per_s > 0
    assert load_device(dev.name) == dev  # by name and by path: the same device


def test_required_devices_are_in_the_catalog():
    # Execute
    names = device_names()
    # Assert
    assert set(REQUIRED) <= set(names)
    assert names == [d.name for d in catalog()]
    assert len(names) == len(set(names))
    assert sorted(p.stem for p in DEVICES_DIR.glob("*.toml")) == sorted(names)


def test_catalog_is_sorted_by_memory_class_then_ram():
    # Execute
    devs = catalog()
    # Assert
    order = {MemoryClass.MCU: 0, MemoryClass.EMBEDDED: 1, MemoryClass.PHONE: 2}
    keys = [(order[d.memory_class], d.ram_bytes) for d in devs]
    assert keys == sorted(keys)


def test_memory_classes_are_populated_and_separated_by_ram():
    # Prepare
    by_class = {c: [d for d in catalog() if d.memory_class is c] for c in MemoryClass}
    # Assert: every class has a device; MCUs have < 2 MB, boards and phones far more
    assert all(by_class[c] for c in MemoryClass)
    assert all(d.ram_bytes < 2 * 1024**2 for d in by_class[MemoryClass.MCU])
    largest_mcu = max(d.ram_bytes for d in by_class[MemoryClass.MCU])
    for c in (MemoryClass.EMBEDDED, MemoryClass.PHONE):
        assert all(d.ram_bytes >= 100 * largest_mcu for d in by_class[c])


def test_catalog_numbers_match_their_datasheets():
    # Execute
    d = {name: load_device(name) for name in REQUIRED}
    # Assert: memory sizes given in the brief / datasheets
    assert d["samd21"].ram_bytes == 32 * 1024 and d["samd21"].flash_bytes == 256 * 1024
    assert d["nrf52840"].ram_bytes == 256 * 1024 and d["nrf52840"].flash_bytes == 1024**2
    assert d["nrf52840"].compute.clock_hz == 64e6
    assert d["stm32f746"].ram_bytes == 320 * 1024 and d["stm32f746"].compute.clock_hz == 216e6
    assert d["esp32"].ram_bytes == 520 * 1024
    assert d["stm32h743"].ram_bytes == 1024**2 and d["stm32h743"].flash_bytes == 2 * 1024**2
    assert d["stm32h743"].compute.clock_hz == 480e6
    # POET's measured rates (after unit checks) and storage energy = power / bandwidth
    assert d["samd21"].compute.fp32_flops_per_s == pytest.approx(2000 / 0.012, rel=1e-3)
    assert d["nrf52840"].compute.fp32_flops_per_s == pytest.approx(6.37e6, rel=1e-3)
    for name in ("samd21", "nrf52840", "esp32", "stm32f746", "stm32h743"):
        st = d[name].storage
        assert st.read_energy_j_per_byte == pytest.approx(
            0.33 / st.read_bandwidth_bytes_per_s, rel=2e-3
        )
        assert st.write_energy_j_per_byte == pytest.approx(
            0.33 / st.write_bandwidth_bytes_per_s, rel=2e-3
        )
    assert d["rpi4"].storage.read_bandwidth_bytes_per_s == 45.5e6
    assert d["jetson-tx2"].storage.write_bandwidth_bytes_per_s == 94.37e6
    # faster classes compute faster; the phone's accelerator is the Hexagon DSP
    assert (
        d["samd21"].compute.fp32_flops_per_s
        < d["rpi4"].compute.fp32_flops_per_s
        < d["snapdragon-865"].compute.fp32_flops_per_s
    )
    acc = d["snapdragon-865"].accelerator
    assert isinstance(acc, Accelerator) and "Hexagon 698" in acc.name
    assert acc.int8_ops_per_s > 1e12 and acc.fp32_flops_per_s == 0
    assert d["samd21"].accelerator is None


# -- to_dict / from_dict -------------------------------------------------------------------


@pytest.mark.parametrize("name", REQUIRED)
def test_to_dict_round_trips_and_is_json(name):
    # Prepare
    dev = load_device(name)
    # Execute
    d = dev.to_dict()
    again = Device.from_dict(json.loads(json.dumps(d)))
    # Assert
    assert again == dev
    assert d["memory_class"] == dev.memory_class.value
    assert d["memory"]["ram_bytes"] == dev.ram_bytes
    assert ("accelerator" in d) == (dev.accelerator is not None)


def test_to_dict_matches_the_toml_file_layout():
    # Prepare
    path = DEVICES_DIR / "jetson-tx2.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    # Execute
    d = load_device(path).to_dict()
    # Assert: same tables and fields as the file (numbers compare equal)
    assert d == raw


def test_from_dict_validates_like_a_file():
    # Prepare
    d = load_device("rpi4").to_dict()
    d["compute"]["fp32_flops_per_s"] = "fast"
    # Execute / Assert
    with pytest.raises(DeviceFileError, match=r"<dict>.*compute\.fp32_flops_per_s.*'fast'.*FLOP/s"):
        Device.from_dict(d)


# -- user files ------------------------------------------------------------------------------


def test_user_file_loads_by_path_and_by_string(tmp_path):
    # Prepare
    path = _write(tmp_path, GOOD)
    # Execute
    by_path, by_str = load_device(path), load_device(str(path))
    # Assert
    assert by_path == by_str
    assert by_path.name == "my-board" and by_path.memory_class is MemoryClass.MCU
    assert by_path.ram_bytes == 131072 and isinstance(by_path.ram_bytes, int)
    assert by_path.storage.capacity_bytes == 8_000_000_000
    assert by_path.compute.cpu == "" and by_path.accelerator is None
    assert load_device(by_path) is by_path  # a Device passes through


def test_user_file_with_accelerator_and_integral_float_bytes(tmp_path):
    # Prepare: 131072.0 is a whole number, so it is accepted as bytes
    text = GOOD.replace("ram_bytes = 131072", "ram_bytes = 131072.0") + (
        '\n[accelerator]\nname = "NPU"\nfp32_flops_per_s = 0\nint8_ops_per_s = 1e11\n'
        "active_power_w = 0.5\n"
    )
    # Execute
    dev = load_device(_write(tmp_path, text))
    # Assert
    assert dev.ram_bytes == 131072 and isinstance(dev.ram_bytes, int)
    assert dev.accelerator == Accelerator("NPU", 0.0, 1e11, 0.5)


def test_user_file_without_toml_suffix_loads_when_it_exists(tmp_path):
    # Prepare
    path = _write(tmp_path, GOOD, name="board.cfg")
    # Execute / Assert
    assert load_device(str(path)).name == "my-board"


# -- bad files: each message names the file, the field, the value and the unit --------------


@pytest.mark.parametrize(
    "old,new,field,value,unit",
    [
        # wrong type: a string where a number belongs
        (
            "write_bandwidth_bytes_per_s = 0.8e6",
            'write_bandwidth_bytes_per_s = "4.4 MB/s"',
            "storage.write_bandwidth_bytes_per_s",
            "'4.4 MB/s'",
            "bytes/s",
        ),
        # a boolean is not a number
        ("clock_hz = 100e6", "clock_hz = true", "compute.clock_hz", "True", "Hz"),
        # non-positive / out of range
        ("active_power_w = 0.05", "active_power_w = -1.0", "compute.active_power_w", "-1.0", "W"),
        ("active_power_w = 0.05", "active_power_w = 0", "compute.active_power_w", "0", "W"),
        (
            "transfer_latency_s = 1.0e-4",
            "transfer_latency_s = 110.0",
            "storage.transfer_latency_s",
            "110.0",
            "seconds",
        ),
        (
            "read_bandwidth_bytes_per_s = 1.0e6",
            "read_bandwidth_bytes_per_s = 2e13",
            "storage.read_bandwidth_bytes_per_s",
            "20000000000000.0",
            "bytes/s",
        ),
        # unit slip: MB/s given where bytes/s belong
        (
            "read_bandwidth_bytes_per_s = 1.0e6",
            "read_bandwidth_bytes_per_s = 4.62",
            "storage.read_bandwidth_bytes_per_s",
            "4.62",
            "bytes/s",
        ),
        # an integer field given a fraction
        (
            "write_endurance_cycles = 1000",
            "write_endurance_cycles = 1000.5",
            "storage.write_endurance_cycles",
            "1000.5",
            "program/erase cycles",
        ),
        ("ram_bytes = 131072", "ram_bytes = 0", "memory.ram_bytes", "0", "bytes"),
    ],
)
def test_bad_value_names_field_value_unit(tmp_path, old, new, field, value, unit):
    # Execute
    msg = _bad_file_error(tmp_path, old, new)
    # Assert
    assert f"'{field}'" in msg
    assert value in msg
    assert unit in msg
    assert "must be" in msg


def test_bad_value_message_states_the_range(tmp_path):
    msg = _bad_file_error(
        tmp_path, "write_bandwidth_bytes_per_s = 0.8e6", "write_bandwidth_bytes_per_s = -5"
    )
    assert "must be a number in bytes/s, ≥ 1000 and ≤ 1e12" in msg


def test_unit_slip_gets_a_hint(tmp_path):
    msg = _bad_file_error(
        tmp_path, "read_bandwidth_bytes_per_s = 1.0e6", "read_bandwidth_bytes_per_s = 4.62"
    )
    assert "MB/s" in msg and "give bytes/s" in msg


def test_missing_required_field(tmp_path):
    msg = _bad_file_error(tmp_path, "clock_hz = 100e6\n", "")
    assert "missing required field 'compute.clock_hz'" in msg
    assert "Hz" in msg


def test_missing_required_table(tmp_path):
    start = GOOD.index("[storage]")
    end = GOOD.index("[compute]")
    msg = _bad_file_error(tmp_path, GOOD[start:end], "")
    assert "missing required table '[storage]'" in msg
    assert "read_bandwidth_bytes_per_s" in msg


def test_unknown_field_suggests_and_lists_allowed_fields(tmp_path):
    msg = _bad_file_error(tmp_path, "write_bandwidth_bytes_per_s", "write_bandwith_bytes_per_s")
    assert "unknown field 'storage.write_bandwith_bytes_per_s'" in msg
    assert "800000.0" in msg
    assert "did you mean 'write_bandwidth_bytes_per_s'" in msg
    assert "allowed fields in [storage]" in msg and "transfer_latency_s" in msg
    # and the correctly spelled field is then missing
    assert "missing required field 'storage.write_bandwidth_bytes_per_s'" in msg


def test_unknown_top_level_field(tmp_path):
    msg = _bad_file_error(tmp_path, 'source = "', 'sources = "extra"\nsource = "')
    assert "unknown field 'sources'" in msg and "'extra'" in msg
    assert "allowed fields in the top level" in msg and "memory_class" in msg


def test_unknown_memory_class_lists_valid_ones(tmp_path):
    msg = _bad_file_error(tmp_path, 'memory_class = "mcu"', 'memory_class = "microcontroller"')
    assert "'memory_class'" in msg and "'microcontroller'" in msg
    assert "'mcu', 'embedded', 'phone'" in msg


def test_empty_source_is_rejected(tmp_path):
    msg = _bad_file_error(tmp_path, 'source = "my own measurements, 2024"', 'source = "  "')
    assert "'source'" in msg and "empty" in msg and "non-empty string" in msg


def test_bad_name_is_rejected(tmp_path):
    msg = _bad_file_error(tmp_path, 'name = "my-board"', 'name = "My Board!"')
    assert "'name'" in msg and "'My Board!'" in msg and "lowercase" in msg


def test_missing_memory_table_and_table_given_as_value(tmp_path):
    # Prepare
    start = GOOD.index("[memory]")
    end = GOOD.index("[storage]")
    without = GOOD[:start] + GOOD[end:]
    # Execute
    msg = _bad_file_error(tmp_path, GOOD[start:end], "")
    path = _write(
        tmp_path,
        without.replace('source = "my own measurements, 2024"', 'source = "x"\nmemory = 5'),
        name="as_value.toml",
    )
    with pytest.raises(DeviceFileError) as info:
        load_device(path)
    # Assert
    assert "missing required table '[memory]'" in msg and "ram_bytes" in msg
    assert "'memory' = 5 (an integer): must be a table" in str(info.value)


def test_idle_power_above_active_power(tmp_path):
    msg = _bad_file_error(tmp_path, "idle_power_w = 0.005", "idle_power_w = 0.5")
    assert "'compute.idle_power_w'" in msg and "0.5" in msg and "W" in msg
    assert "active" in msg


def test_accelerator_without_any_rate(tmp_path):
    text = GOOD + (
        '\n[accelerator]\nname = "NPU"\nfp32_flops_per_s = 0\nint8_ops_per_s = 0\n'
        "active_power_w = 0.5\n"
    )
    path = _write(tmp_path, text)
    with pytest.raises(DeviceFileError, match=r"accelerator\.int8_ops_per_s.*ops/s"):
        load_device(path)


def test_every_problem_is_reported_at_once(tmp_path):
    # Prepare
    text = GOOD.replace("clock_hz = 100e6", 'clock_hz = "fast"').replace(
        'memory_class = "mcu"', 'memory_class = "tiny"'
    )
    # Execute
    with pytest.raises(DeviceFileError) as info:
        load_device(_write(tmp_path, text))
    # Assert
    msg = str(info.value)
    assert "2 problems" in msg and "compute.clock_hz" in msg and "memory_class" in msg


def test_invalid_toml_is_wrapped_with_the_file_name(tmp_path):
    # Prepare
    path = _write(tmp_path, GOOD.replace("ram_bytes = 131072", "ram_bytes = = 131072"))
    # Execute
    with pytest.raises(DeviceFileError) as info:
        load_device(path)
    # Assert
    msg = str(info.value)
    assert str(path) in msg and "invalid TOML" in msg and "line" in msg
    assert isinstance(info.value.__cause__, tomllib.TOMLDecodeError)


# -- unknown devices ------------------------------------------------------------------------


def test_unknown_name_lists_every_catalog_name_and_how_to_pass_a_file():
    # Execute
    with pytest.raises(UnknownDeviceError) as info:
        load_device("nrf5284")
    # Assert
    msg = str(info.value)
    assert all(name in msg for name in device_names())
    assert "did you mean 'nrf52840'" in msg.lower()
    assert ".toml" in msg and "--device" in msg


def test_missing_toml_path_is_unknown_device(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(UnknownDeviceError, match="does not exist"):
        load_device(str(missing))
    with pytest.raises(UnknownDeviceError, match="does not exist"):
        load_device(missing)


def test_name_lookup_tolerates_case_and_underscores():
    assert load_device(" RPi4 ").name == "rpi4"
    assert load_device("rpi_zero_2w").name == "rpi-zero-2w"


def test_unknown_device_error_is_a_key_error_with_a_plain_message():
    with pytest.raises(KeyError) as info:
        load_device("not-a-board")
    assert str(info.value).startswith("unknown device 'not-a-board'")


# -- display --------------------------------------------------------------------------------


def test_format_device_table_has_one_row_per_device():
    # Execute
    rows = format_device_table()
    # Assert
    assert len(rows) == len(catalog())
    assert all(len(r) == len(DEVICE_TABLE_HEADER) for r in rows)
    row = dict(zip(DEVICE_TABLE_HEADER, rows[device_names().index("nrf52840")]))
    assert row["name"] == "nrf52840" and row["class"] == "mcu"
    assert row["RAM"] == "256 KiB" and row["flash"] == "1 MiB"
    assert row["fp32 GFLOP/s"] == "0.00637" and row["accelerator"] == "-"
    phone = dict(zip(DEVICE_TABLE_HEADER, format_device_table([load_device("snapdragon-865")])[0]))
    assert "Hexagon 698" in phone["accelerator"] and "GOP/s int8" in phone["accelerator"]


# -- layering -------------------------------------------------------------------------------


def test_device_module_imports_no_torch():
    code = (
        "import sys\nimport edgetrain.cost._device as d\n"
        "assert d.load_device('nrf52840').ram_bytes == 262144\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
