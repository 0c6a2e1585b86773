"""Caffe's log format: the writer's lines, the parser on them, and the parser on a log from real Caffe."""
from __future__ import annotations

import re

import pytest

from harrison import caffelog
from trainnets import write_setup

GLOG = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [a-z_]+\.cpp:\d+\] ")


def test_numbers_print_as_cpp_streams():
    assert [caffelog.cfloat(v) for v in (0.1, 2.720514, 1e-5, 693.14718, 1234567.0, 0.0, 4.0)] == [
        "0.1", "2.72051", "1e-05", "693.147", "1.23457e+06", "0", "4"]


def _write_run(path, start, stop, *, append=False):
    with caffelog.LogWriter(path, append=append) as log:
        if start:
            log.resuming(f"snap_iter_{start}.solverstate")
        log.solving("toy", "step")
        for it in range(start, stop):
            if it % 4 == 0:
                log.testing(it)
                log.net_output("Test", 0, "loss", 1.0 / (it + 1), 1.0)
                log.net_output("Test", 1, "prob", 0.25, 0.0)
                log.net_output("Test", 2, "prob", 0.75, 0.0)
            loss = 10.0 - it + (0.5 if start else 0.0)
            log.display(it, 3.2, 0.3125, 1, loss)
            log.net_output("Train", 0, "loss", loss, 1.0)
            log.lr(it, 0.1 * 0.5 ** (it // 5))
        log.snapshot_model(f"snap_iter_{stop}.caffemodel")
        log.snapshot_state(f"snap_iter_{stop}.solverstate")
        log.final_loss(stop, 10.0 - stop)
        log.done()


def test_writer_lines_parse_back(tmp_path):
    path = tmp_path / "train.log"
    _write_run(path, 0, 10)
    lines = path.read_text().splitlines()
    assert all(GLOG.match(line) for line in lines)
    assert lines[2].endswith("solver.cpp:347] Iteration 0, Testing net (#0)")
    assert lines[3].endswith("solver.cpp:414]     Test net output #0: loss = 1 (* 1 = 1 loss)")
    assert lines[6].endswith("solver.cpp:239] Iteration 0 (3.2 iter/s, 0.3125s/1 iters), loss = 10")
    assert lines[7].endswith("solver.cpp:258]     Train net output #0: loss = 10 (* 1 = 10 loss)")
    assert lines[8].endswith("sgd_solver.cpp:112] Iteration 0, lr = 0.1")

    log = caffelog.parse_log(path)
    assert [(r.iteration, r.loss, r.lr) for r in log.train] == [(i, 10.0 - i, 0.1 * 0.5 ** (i // 5)) for i in range(10)]
    assert all(r.raw_loss == r.loss for r in log.train)
    assert [(r.iteration, r.name, r.value) for r in log.test if r.index == 0] == [(0, "loss", 1.0), (4, "loss", 0.2), (8, "loss", 0.111111)]
    assert log.test_values("prob") == {0: 0.25, 4: 0.25, 8: 0.25}
    assert [(s.kind, s.path) for s in log.snapshots] == [("model", "snap_iter_10.caffemodel"), ("state", "snap_iter_10.solverstate")]
    assert log.final_loss == caffelog.Display(10, 0.0, final=True)
    assert log.done


def test_appended_resume_replaces_the_interrupted_rows(tmp_path):
    path = tmp_path / "train.log"
    _write_run(path, 0, 7)  # "interrupted" after iteration 6, snapshot at 7
    _write_run(path, 4, 10, append=True)
    log = caffelog.parse_log(path)
    assert [r.iteration for r in log.train] == list(range(10))
    assert [r.loss for r in log.train] == [10.0 - i for i in range(4)] + [10.5 - i for i in range(4, 10)]
    assert sorted({r.iteration for r in log.test}) == [0, 4, 8]
    assert log.done


def test_loss_csv_and_plot(tmp_path):
    path = tmp_path / "train.log"
    _write_run(path, 0, 10)
    log = caffelog.parse_log(path)
    csv_path = caffelog.write_loss_csv(log, tmp_path / "loss.csv")
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "phase,iteration,name,value"
    assert rows[1:3] == ["train,0,loss,10.0", "train,0,lr,0.1"]
    assert "test,4,prob[1],0.75" in rows and "test,8,loss,0.111111" in rows
    png = caffelog.plot_loss(log, tmp_path / "loss.png", title="toy")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.glob("*.partial")) == []


def test_unrelated_lines_are_not_events():
    for line in ("I1129 04:42:50.878091 15092 hdf5.cpp:33] Datatype class: H5T_FLOAT",
                 "I1129 04:42:50.879217 15092 solver.cpp:289] Solving tiny", "layer {", ""):
        assert caffelog.parse_line(line) is None


def test_missing_log_is_a_clear_error(tmp_path):
    from harrison.errors import HarrisonError

    with pytest.raises(HarrisonError, match="not found"):
        caffelog.parse_log(tmp_path / "nope.log")


@pytest.mark.caffe
def test_parses_a_real_caffe_log(caffe_engine, tmp_path):
    solver = write_setup(tmp_path, max_iter=12, display=2, average_loss=3, stepsize=5, test_interval=5,
                         snapshot=6, lr_policy='"step"', base_lr=0.1)
    result = caffe_engine.train(solver, log=tmp_path / "train.log")
    log = caffelog.parse_log(result.log)
    assert [r.iteration for r in log.train] == [0, 2, 4, 6, 8, 10]
    assert [r.lr for r in log.train] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025])
    first = log.train[0]
    assert first.loss == first.raw_loss > 0 and [name for name, _, _ in first.outputs] == ["loss"]
    assert sorted({r.iteration for r in log.test}) == [0, 5, 10]
    assert {r.name for r in log.test} == {"loss", "prob"}
    assert sum(1 for r in log.test if r.iteration == 0 and r.name == "prob") == 10 * 5
    assert [s.path for s in log.snapshots] == [str(tmp_path / f"snapshots/toy_iter_{n}.{ext}")
                                               for n in (6, 12) for ext in ("caffemodel", "solverstate")]
    assert log.final_loss is not None and log.final_loss.iteration == 12
    assert log.done
