"""--tensorboard: the event files read back hold metrics.jsonl's scalars and the samples, and a
resumed run does not show an event twice.

The events are read by `read_events` below, written from TensorBoard's file format (TFRecord
framing around `Event` protos, whose classes tensorboardX ships) and its rule for restarts (a
SessionLog START at step s drops the events of steps >= s read before it). Where the
`tensorboard` package is installed, its own EventAccumulator reads them too and must agree.
"""

import dataclasses
import glob
import json
import os
import struct

import numpy as np
import pytest

pytest.importorskip("tensorboardX", reason="the tensorboard extra (pip install tensorboardX)")

from jaxrnn.config import preset  # noqa: E402
from jaxrnn.tensorboard import SCALAR_TAGS  # noqa: E402


def _records(path):
    """The TFRecord payloads of one event file (a torn last record ends the file)."""
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        start = at + 12  # u64 length, u32 its masked crc
        if start + length + 4 > len(data):
            break
        yield data[start:start + length]
        at = start + length + 4  # the payload, u32 its masked crc


def read_events(logdir):
    """{"scalars": {tag: [(step, value)]}, "texts": {tag: [(step, text)]}} as TensorBoard shows
    them: files in name order, a restart marker dropping the later steps read before it."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    events = []  # (step, kind, tag, value)
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for payload in _records(path):
            event = Event.FromString(payload)
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                events = [e for e in events if e[0] < event.step]
            if event.HasField("summary"):
                for value in event.summary.value:
                    if value.HasField("tensor"):  # a text summary: "TAG/text_summary"
                        events.append((event.step, "texts", value.tag.rsplit("/", 1)[0],
                                       value.tensor.string_val[0].decode()))
                    else:
                        events.append((event.step, "scalars", value.tag, value.simple_value))
    out = {"scalars": {}, "texts": {}}
    for step, kind, tag, value in events:
        out[kind].setdefault(tag, []).append((step, value))
    return out


def read_with_tensorboard(logdir):
    """The same, read by TensorBoard's own EventAccumulator (None if it is not installed)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    return {"scalars": {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]},
            "texts": {t.rsplit("/", 1)[0]: [(e.step, e.tensor_proto.string_val[0].decode())
                                            for e in acc.Tensors(t)] for t in tags["tensors"]}}


def expected_scalars(workdir):
    """{tag: [(step, float32 value)]} from metrics.jsonl (event files hold float32)."""
    expected = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        record = json.loads(line)
        for key, tag in SCALAR_TAGS.items():
            if record.get(key) is not None:
                expected.setdefault(tag, []).append((record["step"],
                                                     float(np.float32(record[key]))))
    return expected


def tiny_config(**overrides):
    return preset("default", hidden_size=16, embedding_size=8, num_layers=1, batch_size=4,
                  seq_len=8, steps=20, steps_per_call=5, log_every=5, eval_every=10,
                  sample_every=10, sample_length=12, checkpoint_every=10, keep_checkpoints=5,
                  schedule="constant", warmup_steps=0, val_frac=0.1, dropout=0.0,
                  tensorboard=True, **overrides)


def _train(config, data, workdir):
    from jaxrnn.train import train_and_evaluate

    return train_and_evaluate(config, str(data), str(workdir), progress=False,
                              impl="fast", log=lambda *a: None)


def _check(workdir, config):
    logdir = os.path.join(workdir, "tensorboard")
    events = read_events(logdir)
    expected = expected_scalars(workdir)
    assert set(expected) == set(SCALAR_TAGS.values())
    assert events["scalars"] == expected  # every value, once, at its step
    (samples_tag,) = events["texts"]
    samples = events["texts"][samples_tag]
    assert samples_tag == "samples"
    assert [step for step, _ in samples] == [10]  # sample_every 10; not at the end
    body = samples[0][1].removeprefix("```\n").removesuffix("\n```")
    assert len(body) == len(config.sample_prime) + config.sample_length
    official = read_with_tensorboard(logdir)
    if official is not None:
        assert official == events
    return events


def test_events_hold_the_scalars_of_metrics_jsonl_and_the_samples(tmp_path, small_text):
    data = tmp_path / "text.txt"
    data.write_text(small_text)
    config = tiny_config()
    _train(config, data, tmp_path / "run")
    events = _check(str(tmp_path / "run"), config)
    assert [s for s, _ in events["scalars"]["train/loss"]] == [5, 10, 15, 20]
    assert [s for s, _ in events["scalars"]["val/bpc"]] == [10, 20]


def test_a_resumed_run_shows_each_event_once(tmp_path, small_text):
    """A run loses its checkpoints after step 10 (as if killed just before the one at step
    20), then resumes: the first attempt's events of steps 11-20 are still in its file, and
    the purge marker of the resumed file hides them. Started over, the old files go."""
    from jaxrnn.checkpoint import CheckpointDir

    data = tmp_path / "text.txt"
    data.write_text(small_text)
    workdir = tmp_path / "run"
    config = tiny_config()
    _train(config, data, workdir)
    checkpoints = CheckpointDir(str(workdir))
    for path in (checkpoints.last_path, checkpoints.best_path,
                 *[p for step, p in checkpoints.step_files() if step > 10]):
        os.unlink(path)
    assert [step for step, _ in checkpoints.step_files()] == [10]

    result = _train(config, data, workdir)
    assert int(result.state.step) == 20
    files = sorted(glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*")))
    assert len(files) == 2
    # both files hold train/loss at step 20: the purge is what shows it once
    for path in files:
        assert _raw_steps(path, "train/loss").count(20) == 1
    _check(str(workdir), config)

    _train(config, data, workdir)  # resumed at the end: trains nothing, adds no event
    _check(str(workdir), config)

    from jaxrnn.train import train_and_evaluate

    train_and_evaluate(config, str(data), str(workdir), overwrite=True, progress=False,
                       impl="fast", log=lambda *a: None)
    assert len(glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*"))) == 1
    _check(str(workdir), config)


def _raw_steps(path, tag):
    """The steps of `tag`'s scalar events in one file, purges not applied."""
    from tensorboardX.proto.event_pb2 import Event

    return [event.step for payload in _records(path) for event in [Event.FromString(payload)]
            for value in event.summary.value if value.tag == tag]


def test_without_tensorboardx_the_error_names_the_field_and_the_install(monkeypatch):
    import sys

    from jaxrnn.errors import UserError
    from jaxrnn.metrics import MetricsWriter

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    with pytest.raises(UserError) as info:
        MetricsWriter("metrics.jsonl", tensorboard=True)
    assert info.value.fields == ("tensorboard",)
    assert "pip install tensorboardX" in str(info.value)
