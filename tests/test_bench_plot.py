"""jaxrnn-bench --plot: the chart of a synthetic set of records (no benchmark runs)."""

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")


def _record(workload, peer, median, torch_median, ok=True, kind="train"):
    return {"workload": workload, "peer": peer, "kind": kind, "ok": ok,
            "chars_per_s_median": median, "chars_per_s_min": 0.9 * median,
            "chars_per_s_max": 1.2 * median, "ratio_to_torch": median / torch_median,
            "machine": "test machine", "check": "ok" if ok else "loss diverged",
            "compile_s": 1.0, "pct_peak": 1.0, "peak_rss_mib": 100.0}


RECORDS = [
    _record("W1", "torch", 1000.0, 1000.0), _record("W1", "jaxrnn", 3000.0, 1000.0),
    _record("W1", "flax", 500.0, 1000.0, ok=False),
    _record("W2", "torch", 200000.0, 200000.0), _record("W2", "jaxrnn", 150000.0, 200000.0),
    # W7's layer records are not chars/s and are not drawn
    {"workload": "W7", "peer": "jaxrnn", "kind": "layer", "ok": True, "impl": "auto",
     "resolved": "kernel", "cell": "gru", "hidden_size": 8, "seq_len": 1024,
     "mode": "forward", "status": "measured", "ms_per_call_median": 3.0,
     "ms_per_call_min": 2.9, "ms_per_call_max": 3.5, "check": None},
]


def _bars(ax):
    """{peer: [(x, height)]} of the bars drawn on `ax`."""
    return {c.get_label(): [(p.get_x() + p.get_width() / 2, p.get_height()) for p in c.patches]
            for c in ax.containers if hasattr(c, "patches")}


def test_chart_draws_each_record_once_with_its_values():
    from benchmarks.plot import chart_data, plot_chart

    chart = chart_data(RECORDS)
    assert chart.workloads == ["W1", "W2"] and chart.peers == ["torch", "jaxrnn", "flax"]
    fig = plot_chart(chart)
    speed, ratio = fig.axes
    bars = _bars(speed)
    assert [h for _, h in bars["torch"]] == [1000.0, 200000.0]
    assert [h for _, h in bars["jaxrnn"]] == [3000.0, 150000.0]
    assert bars["flax"] == []  # failed: no bar, a FAIL mark instead
    assert any(t.get_text() == "FAIL" for t in speed.texts)
    # each workload's bars sit around its tick, peers in order
    fig.canvas.draw()  # tick labels are set at drawing; the panels share the x axis
    ticks = dict(zip([t.get_text() for t in ratio.get_xticklabels()], ratio.get_xticks()))
    for peer in ("torch", "jaxrnn"):
        for (x, _), workload in zip(bars[peer], ("W1", "W2")):
            assert abs(x - ticks[workload]) < 0.5
    assert bars["torch"][0][0] < bars["jaxrnn"][0][0]
    np.testing.assert_allclose([h for _, h in _bars(ratio)["jaxrnn"]], [3.0, 0.75])
    assert speed.get_yscale() == "log"  # 1e3 .. 2e5 spans more than LOG_SPREAD
    assert ratio.get_yscale() == "linear"  # 0.75 .. 3
    # the error bars span min..max of the timed repetitions
    lines = [c for c in speed.containers if c.__class__.__name__ == "ErrorbarContainer"]
    segments = [seg for c in lines for seg in c.lines[2][0].get_segments()]
    spans = sorted((round(s[0][1], 6), round(s[1][1], 6)) for s in segments)
    expected = sorted((round(0.9 * m, 6), round(1.2 * m, 6))
                      for m in (1000.0, 3000.0, 200000.0, 150000.0))
    assert spans == expected


def test_bench_cli_plots_a_saved_json(tmp_path, capsys):
    from benchmarks.cli import main

    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(RECORDS))
    out = tmp_path / "bench.png"
    main(["--from-json", str(saved), "--plot", str(out)])
    printed = capsys.readouterr().out
    assert "W2" in printed and "FAIL (loss diverged)" in printed  # the table
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(SystemExit) as info:
        main(["--from-json", str(saved), "--plot", str(tmp_path / "missing" / "b.png")])
    assert info.value.code == 2
    assert "folder does not exist" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"not": "records"}))
    with pytest.raises(SystemExit):
        main(["--from-json", str(tmp_path / "bad.json")])
    assert "not the records" in capsys.readouterr().err
