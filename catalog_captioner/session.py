"""ONNX Runtime sessions for a bundle, on CUDA when it really works, else on the CPU."""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort

from catalog_captioner.bundle import ModelBundle
from catalog_captioner.errors import BundleError, DeviceError, UsageError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class DeviceOptions:
    """``device``: auto (CUDA if a session really runs there, else CPU), cpu, or cuda."""

    device: str = "auto"
    threads: int = 0  # 0: ONNX Runtime's choice (all cores)
    spinning: bool = True  # ORT worker threads busy-wait between ops (see bench/throughput.py)


@dataclass
class OnnxModel:
    """The bundle's two sessions plus where they actually run."""

    bundle: ModelBundle
    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    provider: str
    notice: str | None = None


def _session_options(threads: int, spinning: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if not spinning:  # idle ORT threads yield the cores to the image loaders
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # provider-probe chatter is ours to summarise
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return options


def _create(path, providers, options: DeviceOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=_session_options(options.threads, options.spinning),
                                    providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for bad graphs
        raise BundleError(f"ONNX Runtime cannot load {path.name}: {str(err).splitlines()[0]}") from None


def open_model(bundle: ModelBundle, options: DeviceOptions = DeviceOptions()) -> OnnxModel:
    """Create sessions and check the graphs match model.json."""
    if options.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, not {options.device!r}")
    notice = None
    provider = CPU
    if options.device in ("auto", "cuda"):
        if CUDA in ort.get_available_providers():
            # A failed CUDA probe logs a multi-line error through ORT's process-wide logger;
            # we report the outcome in one line ourselves.
            ort.set_default_logger_severity(4)
            encoder = _create(bundle.encoder_file, [CUDA, CPU], options)
            if encoder.get_providers()[0] == CUDA:
                decoder = _create(bundle.decoder_file, [CUDA, CPU], options)
                provider = CUDA
            else:
                notice = ("onnxruntime-gpu could not start a CUDA session (no GPU, or CUDA 13/cuDNN 9 libraries missing: "
                          "pip install 'onnxruntime-gpu[cuda,cudnn]'); using the CPU")
        else:
            notice = "this onnxruntime build has no CUDA support; using the CPU"
        if provider != CUDA and options.device == "cuda":
            raise DeviceError(f"--device cuda was asked for, but {notice.split(';')[0]}")
    if provider == CPU:
        encoder = _create(bundle.encoder_file, [CPU], options)
        decoder = _create(bundle.decoder_file, [CPU], options)
    _check_graphs(bundle, encoder, decoder)
    return OnnxModel(bundle, encoder, decoder, provider, notice if options.device == "auto" else None)


def _check_graphs(bundle: ModelBundle, encoder: ort.InferenceSession, decoder: ort.InferenceSession) -> None:
    for label, session, names in (
        ("encoder", encoder, bundle.encoder_names),
        ("decoder", decoder, bundle.decoder_names),
    ):
        have_in = {t.name for t in session.get_inputs()}
        have_out = {t.name for t in session.get_outputs()}
        for role, name in names.inputs.items():
            if name not in have_in:
                raise BundleError(f"{label}.onnx has no input '{name}' (model.json's {role})")
        for role, name in names.outputs.items():
            if name not in have_out:
                raise BundleError(f"{label}.onnx has no output '{name}' (model.json's {role})")
    logits = next(t for t in decoder.get_outputs() if t.name == bundle.decoder_names.outputs["logits"])
    width = logits.shape[-1]
    if isinstance(width, int) and width != len(bundle.vocabulary):
        raise BundleError(
            f"vocabulary size {len(bundle.vocabulary)} != decoder logits size {width}: the bundle's parts do not belong together"
        )
