"""Property-based tests of the bag reader (Hypothesis): damaged copies of a real bag.

Whatever is cut off or flipped, reading gives either the reader's documented error (BagError)
or messages that are exactly the original ones (never altered values), and every message that
is missing is announced (``complete`` False, with damage naming the file) and, where the damage
gives a count, counted exactly. Datasets built from damaged bags hold only finite numbers.
"""
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bag import check_values, write_session

from mbrl_ros.core.data import AlignmentConfig, BagError, bag_to_dataset, read_bag

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    w = write_session(root / "orig", n=300, episode_every=100, chunk_bytes=6_000)
    bag = w.bag_paths[0]
    msgs, rep = read_bag(bag)
    assert rep.complete
    data = (bag / "bag_0000.mcap").read_bytes()
    return bag, data, {(m.topic, m.log_time_ns): m for m in msgs}


def _damaged_copy(tmp_path, bag, data: bytes):
    out = tmp_path / "damaged"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bag, out)
    (out / "bag_0000.mcap").write_bytes(data)
    return out


def _check(out, data_changed: bool, full: dict):
    try:
        msgs, rep = read_bag(out)
    except BagError as e:
        assert str(out) in str(e)
        return
    keys = [(m.topic, m.log_time_ns) for m in msgs]
    assert set(keys) <= set(full) and len(set(keys)) == len(keys)   # nothing invented or doubled
    check_values(msgs)                                               # nothing altered
    for m in msgs:
        if m.topic == "/joint_states":
            np.testing.assert_array_equal(m.msg.velocity, full[(m.topic, m.log_time_ns)].msg.velocity)
    if len(msgs) < len(full):                                        # nothing lost silently
        assert not rep.complete and rep.damage
    if all(d.messages_lost is not None for d in rep.damage):        # and counted exactly
        assert sum(d.messages_lost for d in rep.damage) == len(full) - len(msgs)
        assert all(str(out / "bag_0000.mcap") in str(d) or str(out) in str(d) for d in rep.damage)
    if not data_changed:
        assert rep.complete
    try:
        batch, _, _ = bag_to_dataset(out, AlignmentConfig())
    except BagError:
        return
    for name in ("states", "actions", "next_states", "dt"):
        assert np.all(np.isfinite(getattr(batch, name))), name
    assert batch.meta["bags_complete"] == rep.complete


@FUZZ
@given(keep=st.floats(min_value=0.0, max_value=1.0))
def test_truncation_never_crashes_nor_loses_silently(original, tmp_path, keep):
    bag, data, full = original
    cut = data[: int(len(data) * keep)]
    _check(_damaged_copy(tmp_path, bag, cut), len(cut) < len(data), full)


@FUZZ
@given(flips=st.lists(st.tuples(st.floats(min_value=0.0, max_value=0.9999), st.integers(1, 255)),
                      min_size=1, max_size=8))
def test_byte_flips_never_crash_nor_alter_values(original, tmp_path, flips):
    bag, data, full = original
    buf = bytearray(data)
    for where, mask in flips:
        buf[int(where * len(buf))] ^= mask
    _check(_damaged_copy(tmp_path, bag, bytes(buf)), bytes(buf) != data, full)


@FUZZ
@given(where=st.floats(min_value=0.0, max_value=0.999), length=st.integers(1, 4096),
       seed=st.integers(0, 2**32 - 1))
def test_overwritten_blocks_never_crash_nor_alter_values(original, tmp_path, where, length, seed):
    bag, data, full = original
    buf = bytearray(data)
    pos = int(where * len(buf))
    block = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    buf[pos:pos + length] = block[: len(buf) - pos]
    _check(_damaged_copy(tmp_path, bag, bytes(buf)), bytes(buf) != data, full)
