"""Device profiles: the detected host, the shipped TOML profiles, and clear errors for bad ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tvm

from ago_search import devices
from ago_search.devices import (
    CacheSizes,
    DeviceProfile,
    DeviceProfileError,
    LocalConnection,
    RPCConnection,
    available_devices,
    detect_host,
    host_cache_sizes,
    load_device,
    parse_size,
)
from ago_search.errors import AgoSearchError

SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")


def test_host_is_detected_with_mcpu_threads_and_caches():
    host = load_device("host")
    assert host.name == "host"
    assert host.is_local and isinstance(host.connection, LocalConnection)
    assert host.target["mcpu"] == devices.host_mcpu()
    assert host.key == f"host-{devices.host_mcpu()}"
    assert host.threads == devices.host_num_cores() == host.num_cores
    assert host.cross_compiler is None
    target = host.tvm_target()
    assert target.kind.name == "llvm"
    assert str(target.attrs["mcpu"]) == devices.host_mcpu()
    assert int(target.attrs["num-cores"]) == host.threads
    if (SYSFS / "index0").is_dir():
        assert host.caches.l1d >= 16 << 10
        assert host.caches.l2 >= host.caches.l1d
    # the functions bench.py and api.py use keep working
    assert devices.host_target(1).attrs["num-cores"] == 1
    assert devices.host_mcpu() in devices.host_cpu_name()


def test_detect_host_with_fewer_threads():
    host = detect_host(threads=1)
    assert host.threads == 1 and host.target["num-cores"] == 1


def test_host_caches_from_sysfs_layout(tmp_path):
    entries = [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K")]
    entries.append((3, "Unified", "36M"))
    for index, (level, kind, size) in enumerate(entries):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "type").write_text(f"{kind}\n")
        (folder / "size").write_text(f"{size}\n")
    assert host_cache_sizes(tmp_path) == CacheSizes(l1d=48 << 10, l2=2 << 20, l3=36 << 20)
    assert host_cache_sizes(tmp_path / "missing") == CacheSizes()


def test_pixel7_profile_loads_by_name_and_path():
    phone = load_device("pixel7")
    assert phone == load_device(devices.DEVICES_DIR / "pixel7.toml")
    assert phone.name == "pixel7" and phone.key == "pixel7-tensor-g2"
    assert phone.target["mtriple"] == "aarch64-linux-gnu"
    assert phone.target["mattr"] == ["+neon"]
    assert phone.threads == phone.num_cores == 4
    assert phone.cross_compiler == "aarch64-linux-gnu-g++"
    assert not phone.is_local
    assert phone.connection == RPCConnection("127.0.0.1", 9190, "pixel7", session_timeout=60.0)
    assert phone.caches.l1d == 64 << 10 and phone.caches.l3 == 4 << 20
    target = phone.tvm_target()
    assert "arm_cpu" in [str(key) for key in target.keys]


def test_every_shipped_profile_loads():
    names = available_devices()
    assert names[0] == "host" and "pixel7" in names and "rpi4" in names
    for name in names:
        profile = load_device(name)
        assert isinstance(profile.tvm_target(), tvm.target.Target)


def test_profile_json_round_trip_and_hash():
    for name in ("host", "pixel7"):
        profile = load_device(name)
        again = DeviceProfile.from_json(json.loads(json.dumps(profile.to_json())))
        assert again == profile
        assert hash(again) == hash(profile)


def test_profile_copies_its_target():
    target = {"kind": "llvm", "mattr": ["+avx2"]}
    profile = DeviceProfile(name="x", key="x", target=target, threads=2)
    target["mattr"].append("+fma")
    assert profile.target == {"kind": "llvm", "mattr": ["+avx2"], "num-cores": 2}


def test_minimal_profile_fills_defaults(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text('threads = 2\n[target]\nkind = "llvm"\n')
    board = load_device(path)
    assert board.name == "board" and board.key == "board"
    assert board.target["num-cores"] == 2
    assert board.is_local


GOOD = """
name = "phone"
threads = 4
cross_compiler = "aarch64-linux-gnu-g++"
[target]
kind = "llvm"
mtriple = "aarch64-linux-gnu"
num-cores = 4
[connection]
kind = "rpc"
tracker = "127.0.0.1:9190"
key = "phone"
[cache]
l1d = "64K"
"""


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('kind = "llvm"\n', "", "target.kind"),
        ("num-cores = 4", "num-cores = 0", "target.num-cores"),
        ("num-cores = 4", 'num-cores = "four"', "target.num-cores"),
        ("threads = 4", "threads = -1", "threads"),
        ('kind = "rpc"', 'kind = "usb"', "connection.kind"),
        ('tracker = "127.0.0.1:9190"', 'tracker = "127.0.0.1"', "connection.tracker"),
        ('key = "phone"\n[cache]', "[cache]", "connection.key"),
        ('l1d = "64K"', 'l1d = "lots"', "cache.l1d"),
        ('l1d = "64K"', "l4 = 1", "cache.l4"),
        ('name = "phone"', 'name = "phone"\nthreds = 4', "threds"),
        ('mtriple = "aarch64-linux-gnu"', 'mcpu = "cortex-x1"\nbogus = 1', "target"),
        ('cross_compiler = "aarch64-linux-gnu-g++"', "cross_compiler = 3", "cross_compiler"),
    ],
)
def test_bad_profile_names_file_and_field(tmp_path, old, new, field):
    assert old in GOOD
    path = tmp_path / "phone.toml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(AgoSearchError) as info:
        load_device(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{field}'" in message


def test_good_profile_of_the_bad_cases_loads(tmp_path):
    path = tmp_path / "phone.toml"
    path.write_text(GOOD)
    assert load_device(path).connection.key == "phone"


def test_invalid_toml_and_missing_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(DeviceProfileError, match="broken.toml.*not valid TOML"):
        load_device(path)
    with pytest.raises(DeviceProfileError, match="no such device profile"):
        load_device(tmp_path / "absent.toml")


def test_unknown_device_name_lists_the_known_ones():
    with pytest.raises(DeviceProfileError, match="pixel7"):
        load_device("pixel99")


@pytest.mark.parametrize(
    ("text", "size"),
    [(4096, 4096), ("32K", 32 << 10), ("1M", 1 << 20), ("1 MiB", 1 << 20), ("2G", 2 << 30)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1K", -5, True, 1.5])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)
