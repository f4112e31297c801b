"""Which real disks the lab may format (--allow-mkfs): a real loop device stands for the disk."""
from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from overlaylab.agent.devices import device_problem
from overlaylab.agent.recipes import LAB_LABEL


@contextlib.contextmanager
def loop_disk(tmp_path, mb=64):
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(mb << 20)
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_an_empty_disk_and_one_the_lab_made_may_be_formatted(tmp_path):
    with loop_disk(tmp_path) as dev:
        assert device_problem(dev) is None
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", LAB_LABEL, dev], check=True)
        assert device_problem(dev) is None


def test_a_disk_with_someone_elses_filesystem_is_refused(tmp_path):
    with loop_disk(tmp_path, 320) as dev:  # mkfs.xfs wants 300 MB
        subprocess.run(["mkfs.xfs", "-q", "-f", "-L", "data", dev], check=True)
        assert device_problem(dev) == "%s holds a xfs filesystem labelled 'data', not one the lab made " \
                                      "(label 'overlaylab')" % dev
        subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)  # no label at all
        assert "holds a ext4 filesystem labelled ''" in device_problem(dev)


def test_a_mounted_disk_is_refused_even_with_the_lab_label(tmp_path):
    with loop_disk(tmp_path) as dev:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", LAB_LABEL, dev], check=True)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            assert device_problem(dev) == "%s is mounted (on %s): the lab formats only unused disks" % (dev, mnt)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        assert device_problem(dev) is None


def test_a_partitioned_disk_and_a_non_device_are_refused(tmp_path):
    with loop_disk(tmp_path) as dev:
        subprocess.run(["sfdisk", "-q", dev], input="label: gpt\n,\n", text=True, check=True, capture_output=True)
        assert "has a gpt partition table" in device_problem(dev)
    assert device_problem(str(tmp_path)) == "%s is not a block device" % tmp_path
    assert device_problem("/dev/nonexistent-disk") == "/dev/nonexistent-disk: No such file or directory"
