"""A bundle loads only when it is complete and consistent; each problem gets one clear sentence."""

import json

import pytest

from catalog_captioner.bundle import ModelBundle
from catalog_captioner.errors import BundleError
from catalog_captioner.session import DeviceOptions, open_model
from tests.conftest import catcap


def _edit_record(folder, change):
    path = folder / "model.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def test_a_complete_bundle_loads_with_everything_the_runtime_needs(tiny_bundle):
    bundle = ModelBundle.load(tiny_bundle)
    assert bundle.input_size == 96
    assert bundle.vocabulary.words[:4] == ("<pad>", "<start>", "<end>", "<unk>")
    assert "acme" in bundle.vocabulary.words
    record = bundle.record
    assert record["format_version"] == 1 and record["backbone"] == "efficientnet_lite0"
    assert record["parity"]["max_abs_diff"] <= 1e-4 and record["parity"]["greedy_match"] >= 0.99
    assert record["training"]["data"]["train_images"] > 0
    assert set(record["encoder"]["outputs"]) == {"features", "keys", "hidden"}
    model = open_model(bundle, DeviceOptions("cpu"))
    assert model.provider == "CPUExecutionProvider"


def test_missing_model_json_is_named(bundle_copy):
    (bundle_copy / "model.json").unlink()
    with pytest.raises(BundleError, match="model.json is missing"):
        ModelBundle.load(bundle_copy)


def test_missing_onnx_file_is_named(bundle_copy):
    (bundle_copy / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match="missing decoder.onnx"):
        ModelBundle.load(bundle_copy)


def test_checksum_mismatch_is_refused(bundle_copy):
    with open(bundle_copy / "encoder.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="fails its checksum"):
        ModelBundle.load(bundle_copy)


def test_unknown_format_version_is_refused(bundle_copy):
    _edit_record(bundle_copy, lambda r: r.update(format_version=99))
    with pytest.raises(BundleError, match="format version 99"):
        ModelBundle.load(bundle_copy)


def test_not_json_is_refused(bundle_copy):
    (bundle_copy / "model.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        ModelBundle.load(bundle_copy)


def test_missing_field_is_named(bundle_copy):
    _edit_record(bundle_copy, lambda r: r.pop("max_length"))
    with pytest.raises(BundleError, match="'max_length'"):
        ModelBundle.load(bundle_copy)


def test_vocabulary_that_does_not_match_the_decoder_logits_is_refused(bundle_copy):
    def grow(record):
        record["vocabulary"]["words"].append("extra")
        record["decoder"]["vocab_size"] += 1

    _edit_record(bundle_copy, grow)
    bundle = ModelBundle.load(bundle_copy)  # self-consistent JSON ...
    with pytest.raises(BundleError, match="!= decoder logits size"):  # ... but not the graph
        open_model(bundle, DeviceOptions("cpu"))


def test_vocabulary_size_contradicting_model_json_is_refused(bundle_copy):
    _edit_record(bundle_copy, lambda r: r["decoder"].update(vocab_size=3))
    with pytest.raises(BundleError, match="vocabulary has"):
        ModelBundle.load(bundle_copy)


def test_cli_reports_a_bad_bundle_in_one_line_without_traceback(bundle_copy, tmp_path):
    (bundle_copy / "encoder.onnx").unlink()
    catalog = tmp_path / "c.csv"
    catalog.write_text("image\na.jpg\n")
    result = catcap("run", catalog, "--out", tmp_path / "o.csv", "--model", bundle_copy, check=False)
    assert result.returncode == 1
    assert "missing encoder.onnx" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.csv").exists()


def test_cuda_request_fails_clearly_without_a_gpu(tiny_bundle):
    import onnxruntime as ort

    bundle = ModelBundle.load(tiny_bundle)
    probe = open_model(bundle, DeviceOptions("auto"))
    if probe.provider == "CUDAExecutionProvider":
        pytest.skip("a working CUDA device is present; the failure path cannot be shown here")
    with pytest.raises(Exception, match="--device cuda was asked for"):
        open_model(bundle, DeviceOptions("cuda"))
    assert probe.provider == "CPUExecutionProvider"
    assert "CPUExecutionProvider" in ort.get_available_providers()


def test_info_lists_the_record_and_the_provider_really_in_use(tiny_bundle):
    result = catcap("info", "--model", tiny_bundle, "--json")
    report = json.loads(result.stdout)
    assert report["provider_in_use"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert report["encoder_providers"][0] == report["provider_in_use"]
    assert report["model"]["parity"]["greedy_match"] >= 0.99
