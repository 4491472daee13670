"""The parity arithmetic on known logits, the tolerance rules, the int8 ladder and its records, SmoothQuant and the
fusion check on hand-built graphs, CPU flag parsing (no trained model, fast)."""

from __future__ import annotations

import dataclasses

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bertpack.errors import BertpackError
from export import parity, quantize
from export.cpu import cpu_flags, quantization_target
from bertpack.manifest import file_table, make_version
from bertpack.files import sha256_file

DATA = parity.Eval(sentences=["a", "b", "c", "d"], labels=[1, 0, 1, 0], domains=["in", "in", "out", "out"])
REF = np.array([[0.0, 2.0], [3.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)  # predicts 1,0,1,0: all right


def test_score_on_known_logits():
    same = parity.score("fp32", REF.copy(), REF, DATA, 10)
    assert (
        same["agreement"] == 100.0
        and same["max_abs_logit_diff"] == 0.0
        and same["accuracy"] == 1.0
        and same["mcc"] == 1.0
    )
    # flip the last sentence's decision and move one logit by 0.5
    other = REF.copy()
    other[3] = [0.0, 1.5]
    other[0, 0] += 0.5
    row = parity.score("int8", other, REF, DATA, 10)
    assert row["agreement"] == 75.0
    assert row["max_abs_logit_diff"] == pytest.approx(1.5)
    assert row["mean_abs_logit_diff"] == pytest.approx((0.5 + 1.0 + 1.5) / 8)
    assert row["accuracy"] == 0.75
    assert row["mcc_in_domain"] == 1.0 and row["mcc_out_domain"] == 0.0
    assert row["mcc"] == pytest.approx(0.5773502691896258)


def test_tolerance_rules():
    tol = parity.Tolerance()
    ref_row = parity.score("pytorch fp32", REF, REF, DATA)
    exact = dict(ref_row, variant="optimized", max_abs_logit_diff=2e-3)
    assert parity.check(exact, ref_row, tol) == ["max |logit diff| 2.00e-03 > 0.001"]
    assert parity.check(dict(ref_row, variant="optimized", max_abs_logit_diff=1e-4), ref_row, tol) == []
    int8 = dict(ref_row, variant="int8", mcc=ref_row["mcc"] - 0.02, agreement=97.0, max_abs_logit_diff=1.0)
    problems = parity.check(int8, ref_row, tol)
    assert len(problems) == 2 and problems[0].startswith("MCC drop 0.0200") and "97.00% < 98%" in problems[1]
    # an int8 model that beats the reference MCC passes the MCC rule; a large logit diff is allowed for int8
    assert parity.check(dict(int8, mcc=ref_row["mcc"] + 0.1, agreement=99.0), ref_row, tol) == []


@pytest.mark.parametrize(
    "text,expected",
    [
        (None, parity.Tolerance()),
        ("0.02", parity.Tolerance(mcc_drop=0.02)),
        (
            "mcc_drop=0.05,agreement=95,logit=1e-2",
            parity.Tolerance(mcc_drop=0.05, min_agreement=95.0, exact_max_logit_diff=1e-2),
        ),
    ],
)
def test_tolerance_parse(text, expected):
    assert parity.Tolerance.parse(text) == expected


@pytest.mark.parametrize("text", ["abc", "speed=3", "agreement=150", "mcc_drop=-1", "logit=0"])
def test_tolerance_parse_rejects(text):
    with pytest.raises(BertpackError):
        parity.Tolerance.parse(text)


def test_ladder_starts_at_optimum_defaults_and_gets_safer():
    for method in quantize.METHODS:
        tries = quantize.ladder(method, "avx2")
        assert tries[0] == quantize.Int8Settings(method=method, target="avx2")
        assert all(t.per_channel for t in tries[1:])
        assert len({t.name for t in tries}) == len(tries)
        assert "ffn_out" in tries[-1].exclude and tries[-1].reduce_range
        smoothed = [t for t in tries if t.smooth_alpha is not None]
        # dynamic smooths from the fourth rung on (every rung that keeps ffn_out in fp32); static in one rung, the
        # fifth:
        # the fourth (ffn_out in fp32, minmax) smoothed at alpha 0.75, before percentile calibration
        assert smoothed == (tries[3:] if method == "dynamic" else [tries[4]])
        alpha = "0.5" if method == "dynamic" else "0.75"
        assert all("ffn_out" in t.exclude and f"smoothquant {alpha}" in t.name for t in smoothed)
        if method == "static":
            assert tries[4] == dataclasses.replace(tries[3], smooth_alpha=0.75) and tries[5].calibration == "percentile"


def test_sensitive_nodes(tmp_path):
    import onnx
    from onnx import helper

    names = [
        "/bert/encoder/layer.0/attention/self/query/MatMul",
        "/bert/encoder/layer.0/output/dense/MatMul",
        "/bert/encoder/layer.1/attention/self/query/MatMul",
        "/bert/encoder/layer.1/intermediate/dense/MatMul",
        "/bert/encoder/layer.1/output/dense/MatMul",
        "/bert/pooler/dense/Gemm",
        "/classifier/Gemm",
    ]
    nodes = [
        helper.make_node("MatMul" if n.endswith("MatMul") else "Gemm", ["x", "w"], [f"y{i}"], name=n)
        for i, n in enumerate(names)
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y0", onnx.TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor("w", onnx.TensorProto.FLOAT, [1, 1], [1.0])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert quantize.sensitive_nodes(path, (), 2) == []
    assert quantize.sensitive_nodes(path, ("head",), 2) == ["/bert/pooler/dense/Gemm", "/classifier/Gemm"]
    assert quantize.sensitive_nodes(path, ("ffn_out",), 2) == [names[1], names[4]]
    assert quantize.sensitive_nodes(path, ("last1",), 2) == names[2:5]


def test_sensitive_nodes_fused_graph(tmp_path):
    """In the fused graph (dynamic int8's input) lastN also keeps that layer's fused Attention in fp32."""
    import onnx
    from onnx import helper

    nodes = [
        helper.make_node("Attention", ["x"], ["a0"], name="Attention_0", domain="com.microsoft"),
        helper.make_node("MatMul", ["a0", "w"], ["m0"], name="/bert/encoder/layer.0/output/dense/MatMul"),
        helper.make_node("Attention", ["m0"], ["a1"], name="Attention_1", domain="com.microsoft"),
        helper.make_node("MatMul", ["a1", "w"], ["y"], name="/bert/encoder/layer.1/output/dense/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor("w", onnx.TensorProto.FLOAT, [1, 1], [1.0])],
    )
    path = tmp_path / "fused.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]),
        str(path),
    )
    assert quantize.sensitive_nodes(path, ("last1",), 2) == ["/bert/encoder/layer.1/output/dense/MatMul", "Attention_1"]
    assert quantize.sensitive_nodes(path, ("ffn_out",), 2) == [
        "/bert/encoder/layer.0/output/dense/MatMul",
        "/bert/encoder/layer.1/output/dense/MatMul",
    ]
    assert quantize.settings_record(quantize.Int8Settings("dynamic", "avx2"), 2, path)["graph"].startswith("fused")


def test_cpu_flags_and_target(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    flags = cpu_flags(info)
    assert {"avx2", "sse4_2"} <= flags
    assert quantization_target(flags) == "avx2"
    assert quantization_target(flags | {"avx512f", "avx512bw"}) == "avx512"
    assert quantization_target(flags | {"avx512f", "avx512bw", "avx512_vnni"}) == "avx512_vnni"
    assert cpu_flags(tmp_path / "missing") == set()


def test_manifest_file_table_hashes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"hello")
    (tmp_path / "manifest.json").write_text("{}")
    table = file_table(tmp_path)
    assert set(table) == {"a.bin"}
    assert table["a.bin"] == {"sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", "bytes": 5}
    (tmp_path / "model.safetensors").write_bytes(b"w")
    from datetime import datetime

    version = make_version(tmp_path, datetime(2026, 1, 2, 3, 4, 5))
    assert version.startswith("20260102-030405-") and version == version.lower()
    assert sha256_file(tmp_path / "a.bin") == table["a.bin"]["sha256"]


def test_report_tables_render_every_row():
    ref_row = dict(parity.score("pytorch fp32", REF, REF, DATA), status="reference")
    int8 = dict(parity.score("int8", REF, REF, DATA, 2_000_000), status="pass", method="static", flip_rate=0.0)
    report = {
        "source": "/x/model",
        "created": "now",
        "sentences": 4,
        "provider": "CPUExecutionProvider",
        "tolerance": parity.tolerance_dict(parity.Tolerance()),
        "rows": [ref_row, int8, {"variant": "fp16", "status": "not checked (no GPU)"}],
        "int8_tries": {
            "static": [
                {
                    "settings": {"name": "static avx2 per-tensor minmax"},
                    "passed": True,
                    "problems": [],
                    "mcc": 1.0,
                    "agreement": 100.0,
                    "max_abs_logit_diff": 0.0,
                }
            ]
        },
        "serving_default_cpu": "int8",
        "failures": [],
    }
    text = parity.format_text(report)
    assert "int8 (static)" in text and "not checked (no GPU)" in text and "static avx2 per-tensor minmax" in text
    md = parity.format_markdown(report)
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3
    assert len({line.replace("\\|", "").count("|") for line in table}) == 1  # escaped pipes keep the columns aligned
    assert "| int8 (static) | 1.0000 |" in md and "2.0 |" in md


def test_report_footer_names_an_int8_default_only_when_one_ships():
    from export.parity import _footer

    tol = {"exact_max_logit_diff": 1e-3, "exact_agreement": 100.0, "mcc_drop": 0.01, "min_agreement": 98.0}
    base = {"tolerance": tol, "int8_tries": {}}
    shipped = _footer(
        {
            **base,
            "int8_choice": "dynamic (dynamic: pass, MCC 0.3, agreement 98.90%)",
            "int8_method": "dynamic",
            "serving_default_cpu": "int8",
        }
    )
    assert "int8 default: dynamic (dynamic: pass" in shipped
    none = _footer(
        {
            **base,
            "int8_choice": "static (static: FAIL, MCC 0.1, agreement 97.50%)",
            "int8_method": None,
            "serving_default_cpu": "optimized",
        }
    )
    assert "int8 default" not in none and "int8: no method within tolerance (best: static (static: FAIL" in none
    assert "CPU serving default: optimized" in none


def test_tolerance_boundaries_are_inclusive():
    """At the tolerance is within it: an MCC drop of exactly mcc_drop and agreement of exactly min_agreement pass
    (float noise in the drop included); a hair beyond fails. An exact variant needs both the logit and agreement
    rule."""
    ref_row = {"variant": "pytorch fp32", "mcc": 0.5, "agreement": 100.0}
    tol = parity.Tolerance()
    assert parity.check({"variant": "int8", "mcc": 0.49, "agreement": 98.0}, ref_row, tol) == []
    assert len(parity.check({"variant": "int8", "mcc": 0.4899, "agreement": 97.99}, ref_row, tol)) == 2
    loose_logits = parity.Tolerance.parse("logit=1")
    assert parity.check(
        {"variant": "optimized", "max_abs_logit_diff": 0.5, "agreement": 99.0}, ref_row, loose_logits
    ) == ["agreement 99.00% < 100%"]


def _winner(passed: bool, mcc: float, agreement: float = 99.0) -> dict:
    return {"passed": passed, "row": {"mcc": mcc, "agreement": agreement}}


def test_int8_choice_fewest_flips_then_mcc_then_static():
    from export.pipeline import _choose_int8

    flips = {"int8_static": {"flip_rate": 0.0}, "int8_dynamic": {"flip_rate": 2.0}}
    assert _choose_int8({"static": _winner(True, 0.30), "dynamic": _winner(True, 0.35)}, flips) == "static"
    even = {"int8_static": {"flip_rate": 1.0}, "int8_dynamic": {"flip_rate": 1.0}}
    assert _choose_int8({"static": _winner(True, 0.30), "dynamic": _winner(True, 0.35)}, even) == "dynamic"
    assert _choose_int8({"dynamic": _winner(True, 0.35), "static": _winner(True, 0.35)}, even) == "static"
    assert _choose_int8({"static": _winner(False, 0.40), "dynamic": _winner(True, 0.30)}, flips) == "dynamic"


def test_int8_try_that_passes_beats_a_closer_one_that_fails():
    from export.pipeline import _try_rank

    assert _try_rank(True, {"agreement": 98.1, "mcc": 0.30}) > _try_rank(False, {"agreement": 99.9, "mcc": 0.40})
    assert _try_rank(False, {"agreement": 97.9, "mcc": 0.30}) > _try_rank(False, {"agreement": 97.5, "mcc": 0.40})


def test_calibration_never_pads():
    """Percentile ranges come from histograms of every position a calibration run sees: no [PAD] may be among them."""
    ids = [[101, 7, 102], [101, 102], [101, 8, 102], [101, 5, 6, 7, 102]]
    calib = quantize.Calibration(ids=ids, input_names=["input_ids", "attention_mask"])
    assert calib.dataset()["input_ids"] == ids and calib.dataset()["attention_mask"] == [[1] * len(s) for s in ids]
    groups = calib.datasets_by_length()
    assert [g["input_ids"] for g in groups] == [[[101, 102]], [[101, 7, 102], [101, 8, 102]], [[101, 5, 6, 7, 102]]]
    assert all(set(g.column_names) == {"input_ids", "attention_mask"} for g in groups)
    assert all(all(v == 1 for row in g["attention_mask"] for v in row) for g in groups)


def test_percentile_ranges_come_from_real_tokens_only(tiny_run, tmp_path, monkeypatch):
    """Calibrated one length at a time, every percentile range lies within the min-max range of the real tokens'
    activations (padded to one length, as before, 21 of this model's 41 ranges reached outside it: [PAD] values)."""
    import onnxruntime as ort

    from export.onnx_export import export_fp32
    from export.quantize import Calibration, Int8Settings, quantize as run_quantize

    export_fp32(tiny_run / "model", tmp_path / "fp32")
    ids = [
        [101, 2023, 102],
        [101, 2023, 2003, 102],
        [101, 1037, 102],
        [101, 2023, 2003, 1037, 4937, 2006, 1996, 13523, 1012, 102],
    ]
    calib = Calibration(ids=ids, input_names=["input_ids", "attention_mask", "token_type_ids"])
    cache: dict = {}
    run_quantize(
        tmp_path / "fp32", tmp_path / "minmax", Int8Settings("static", "avx2", calibration="minmax"), 2, calib, cache
    )
    from optimum.onnxruntime import ORTQuantizer

    calls, partial_fit = [], ORTQuantizer.partial_fit

    def recorded(self, dataset, calibration_config, *args, **kwargs):  # passes every call through to Optimum
        calls.append((dataset["input_ids"], calibration_config.method))
        return partial_fit(self, dataset, calibration_config, *args, **kwargs)

    monkeypatch.setattr(ORTQuantizer, "partial_fit", recorded)
    path = run_quantize(
        tmp_path / "fp32", tmp_path / "pct", Int8Settings("static", "avx2", calibration="percentile"), 2, calib, cache
    )
    # one collection per length (3, 4, 10 tokens), every sentence once; the first creates the calibrator, the rest add
    # to it
    assert [rows for rows, _ in calls] == [[ids[0], ids[2]], [ids[1]], [ids[3]]]
    assert calls[0][1] is not None and [method for _, method in calls[1:]] == [None, None]
    real, pct = cache["minmax"], cache["percentile"]
    shared = [name for name in pct.data if name in real.data]
    assert len(shared) > 20
    outside = [
        name
        for name in shared
        if pct[name].range_value[0] < real[name].range_value[0] - 1e-6
        or pct[name].range_value[1] > real[name].range_value[1] + 1e-6
    ]
    assert outside == []
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {
        "input_ids": np.array([ids[1]]),
        "attention_mask": np.ones((1, 4), dtype=np.int64),
        "token_type_ids": np.zeros((1, 4), dtype=np.int64),
    }
    assert session.run(None, feed)[0].shape == (1, 2)


@pytest.mark.parametrize("target", ["avx2", "avx512", "avx512_vnni", "arm64"])
@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_quantization_config_carries_the_try_settings(method, target):
    """Each ladder rung's per-channel / reduce-range / exclusions reach Optimum's config (the reduce-range
    rungs were otherwise the rung before them under another name)."""
    from export.quantize import STATIC_OPERATORS, Int8Settings, quantization_config

    for per_channel, reduce_range in ((False, False), (True, True), (True, False)):
        config = quantization_config(
            Int8Settings(method, target, per_channel=per_channel, reduce_range=reduce_range), ["n1"]
        )
        assert (config.per_channel, config.reduce_range, list(config.nodes_to_exclude)) == (
            per_channel,
            reduce_range,
            ["n1"],
        )
        assert config.is_static == (method == "static")
        if method == "static":
            assert list(config.operators_to_quantize) == STATIC_OPERATORS


def _products_graph(path: Path) -> list[str]:
    names = [
        "/bert/encoder/layer.0/attention/self/query/MatMul",
        "/bert/encoder/layer.0/output/dense/MatMul",
        "/bert/encoder/layer.1/attention/self/query/MatMul",
        "/bert/encoder/layer.1/output/dense/MatMul",
        "/bert/pooler/dense/Gemm",
        "/classifier/Gemm",
    ]
    nodes = [
        helper.make_node("MatMul" if n.endswith("MatMul") else "Gemm", ["x", "w"], [f"y{i}"], name=n)
        for i, n in enumerate(names)
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y0", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, [1, 1], [1.0])],
    )
    onnx.save(helper.make_model(graph), str(path))
    return names


def test_settings_record_lists_the_nodes_kept_in_fp32(tmp_path):
    """The manifest's record of an int8 try names the nodes it kept in fp32 (what parity.md and bench report)."""
    from export.quantize import STATIC_OPERATORS, Int8Settings, settings_record

    path = tmp_path / "m.onnx"
    names = _products_graph(path)
    settings = Int8Settings("static", "avx2", per_channel=True, exclude=("head", "last1"))
    record = settings_record(settings, 2, path, calibration_sentences=16)
    assert record["nodes_excluded"] == [names[4], names[5], names[2], names[3]]
    assert record["exclude"] == ["head", "last1"] and record["name"] == settings.name
    assert record["graph"] == "unfused (as exported)" and record["operators"] == STATIC_OPERATORS
    assert record["calibration_sentences"] == 16
    assert settings_record(Int8Settings("dynamic", "avx2"), 2, path)["nodes_excluded"] == []


def _ffn_in_graph(path: Path) -> None:
    """input_ids -> x[:, :, 0] = id, x[:, :, 1] = -2 id -> MatMul named as an FFN up-projection (smoothed group
    ffn_in)."""
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids_f", "axis"], ["ids_3d"]),
        helper.make_node("Mul", ["ids_3d", "spread"], ["x"]),
        helper.make_node("MatMul", ["x", "w"], ["logits"], name="/bert/encoder/layer.0/intermediate/dense/MatMul"),
    ]
    inits = [
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis"),
        numpy_helper.from_array(np.array([1.0, -2.0], dtype=np.float32), "spread"),
        numpy_helper.from_array(np.array([[0.5, -1.0, 0.25], [4.0, 0.5, -0.5]], dtype=np.float32), "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seq", 3])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


def test_smoothquant_channel_ranges_are_max_abs_and_the_graph_stays_valid(tmp_path):
    """channel_ranges is max |x_j| over every token of every sentence (not a mean, not signed); the smoothed graph
    keeps ONNX's topological order (each Mul before its product), so onnx.checker and ORT accept it unchanged."""
    import onnxruntime as ort

    from export import smoothquant

    source, smoothed = tmp_path / "ffn.onnx", tmp_path / "smoothed.onnx"
    _ffn_in_graph(source)
    ranges = smoothquant.channel_ranges(source, [[1, 5, 2], [3]], ["input_ids"])
    np.testing.assert_allclose(ranges["x"], [5.0, 10.0])
    assert smoothquant.smooth(source, smoothed, ranges, alpha=0.5) == [
        "/bert/encoder/layer.0/intermediate/dense/MatMul"
    ]
    onnx.checker.check_model(onnx.load(str(smoothed)), full_check=True)
    order = [n.name for n in onnx.load(str(smoothed)).graph.node]
    assert order.index("/bert/encoder/layer.0/intermediate/dense/MatMul_smooth") < order.index(
        "/bert/encoder/layer.0/intermediate/dense/MatMul"
    )
    feed = {"input_ids": np.array([[1, 5, 2]], dtype=np.int64)}
    before = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    after = ort.InferenceSession(str(smoothed), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(after, before, rtol=1e-5)


def test_attention_fusion_check_wants_one_per_layer():
    from export.optimize import check_attention_fused

    check_attention_fused({"Attention": 2}, 2, "optimized")
    check_attention_fused({"MultiHeadAttention": 12}, 12, "fp16")
    check_attention_fused({}, 0, "optimized")  # no layer count known: nothing to check
    for fused, layers in (({"Attention": 1}, 2), ({"Attention": 11, "MultiHeadAttention": 0}, 12), ({}, 2)):
        with pytest.raises(BertpackError, match="eager attention"):
            check_attention_fused(fused, layers, "optimized")
