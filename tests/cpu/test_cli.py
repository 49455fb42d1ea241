import json
import sys
from pathlib import Path

import pytest

import vramobs
from vramobs import cli

VRAMOBS = str(Path(sys.executable).with_name("vramobs"))


def test_info_on_host_backend(run_command):
    result = run_command([VRAMOBS, "info", "--backend", "host"])
    assert result.returncode == 0, result.stderr
    assert "note: HOST BACKEND" in result.stdout
    assert "device 0" in result.stdout
    assert "vramobs host emulation (HOST-" in result.stdout
    assert "free 8.00 GiB of 8.00 GiB" in result.stdout
    assert result.stderr == ""


def test_info_json_on_host_backend(run_command):
    result = run_command(
        [VRAMOBS, "info", "--json", "--backend", "host"],
        env={"VRAMOBS_HOST_DEVICES": "2", "VRAMOBS_HOST_CAPACITY": "1048576"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "host"
    assert report["library_version"] == report["vramobs"]
    assert report["library"].endswith("libvram_ops.so")
    assert [d["index"] for d in report["devices"]] == [0, 1]
    for d in report["devices"]:
        assert d["uuid"].startswith("HOST-")
        assert d["state"] == "usable"
        assert d["free_bytes"] == d["total_bytes"] == 1048576


def test_info_in_process(capsys):
    assert cli.main(["info", "--json", "--backend", "host"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "host" and report["vramobs"] == vramobs.__version__
    assert report["devices"][0]["total_bytes"] == vramobs.get_info().total


def test_info_without_driver_fails_cleanly(run_command):
    result = run_command([VRAMOBS, "info"], env={"VRAMOBS_CUDA_DRIVER": "/nonexistent"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "no usable device" in result.stderr
    assert "--backend host" in result.stderr
    assert "cannot load the NVIDIA driver library /nonexistent" in result.stdout


def test_info_with_missing_library_fails_cleanly(run_command, tmp_path):
    result = run_command([VRAMOBS, "info"], env={"VRAMOBS_LIBRARY": str(tmp_path / "none.so")})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("vramobs: cannot load libvram_ops")


@pytest.mark.parametrize("argv", [[], ["info", "--backend", "bogus"], ["frobnicate"]])
def test_bad_usage_exits_2(run_command, argv):
    result = run_command([VRAMOBS, *argv])
    assert result.returncode == 2
    assert "usage: vramobs" in result.stderr
    assert "Traceback" not in result.stderr


def test_version(run_command):
    result = run_command([VRAMOBS, "--version"])
    assert result.returncode == 0
    assert result.stdout.strip() == f"vramobs {vramobs.__version__}"
