"""Loading one model folder into a `ModelEntry`: its config, labels and every version.

A version that fails to load is recorded with its reason and leaves the
others serving; a folder whose default version fails is FAILED as a whole.
"""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelplex.core.batching import Batcher
from modelplex.core.catalog import ModelState, version_sort_key
from modelplex.core.classification import Classifier, read_labels
from modelplex.core.model_config import (
    ModelConfig,
    RuntimeKind,
    declares_required,
    load_model_config,
)
from modelplex.core.preprocessing import ImagePreprocessor
from modelplex.core.queueing import LOW_PRIORITY_SHARE
from modelplex.core.runtimes import Runtime, RuntimeSpec, load_runtime
from modelplex.core.runtimes.base import describe_failure
from modelplex.core.served import ModelEntry, ServedVersion, VersionFailure
from modelplex.core.stats import ModelStats
from modelplex.core.tensors import TensorSpec
from modelplex.core.user_code import module_name_for
from modelplex.errors import ModelLoadError
from modelplex.settings import Settings

log = logging.getLogger(__name__)

MODEL_FILE = "model.toml"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Model and version folder names (also what a reload request may name)."""


def _runtime_inputs(
    inputs: tuple[TensorSpec, ...], config: ModelConfig, preprocessor: ImagePreprocessor | None
) -> tuple[TensorSpec, ...]:
    """What the runtime receives: the preprocessed image in place of the encoded one."""
    if preprocessor is None or config.preprocessing is None:
        return inputs
    source = config.preprocessing.input
    return (*(s for s in inputs if s.name != source), preprocessor.output_spec)


def _log_failure(exc: Exception, what: str) -> None:
    """An expected failure (a ModelLoadError: bad model.toml, missing file) is one
    line with its message; anything else keeps its traceback for whoever debugs it."""
    if isinstance(exc, ModelLoadError):
        log.error("%s failed to load: %s", what, exc.message)
    else:
        log.error("%s failed to load", what, exc_info=exc)


class VersionLoader:
    """Builds model entries with the server's defaults filling the gaps in model.toml."""

    def __init__(self, settings: Settings, *, sync_share: float = LOW_PRIORITY_SHARE) -> None:
        self._settings = settings
        self._sync_share = sync_share

    def build_entry(self, name: str, folder: Path) -> ModelEntry:
        started = time.perf_counter()
        entry = ModelEntry(name=name, path=folder)
        try:
            if not NAME.match(name):
                raise ModelLoadError(f"'{name}' is not a valid model name")
            config = load_model_config(folder / MODEL_FILE)
            entry.config, entry.required = config, config.required
            if config.classification and config.classification.labels:
                entry.labels = read_labels(folder / config.classification.labels)
            versions = sorted(
                (p.name for p in folder.iterdir() if p.is_dir() and NAME.match(p.name)),
                key=version_sort_key,
            )
            if not versions:
                raise ModelLoadError("no version folders")
            default = config.default_version or versions[-1]
            if default not in versions:
                raise ModelLoadError(f"default_version '{default}' has no folder")
            entry.default_version = default
            for version in versions:
                try:
                    entry.versions[version] = self._load_version(entry, config, version)
                except Exception as exc:
                    _log_failure(exc, f"model {name} version {version}")
                    entry.failures[version] = VersionFailure(version, describe_failure(exc))
            if default in entry.versions:
                entry.versions[default].is_default = True
                state, reason = ModelState.READY, None
            else:
                state = ModelState.FAILED
                reason = f"default version {default}: {entry.failures[default].reason}"
        except Exception as exc:
            _log_failure(exc, f"model {name}")
            state, reason = ModelState.FAILED, describe_failure(exc)
            if entry.config is None:  # a broken model.toml can still say it is required
                entry.required = declares_required(folder / MODEL_FILE)
        entry.state, entry.reason = state, reason
        log.info(
            "model %s: %s, versions %s (default %s) in %.2fs",
            name,
            state.value,
            sorted(entry.versions, key=version_sort_key),
            entry.default_version,
            time.perf_counter() - started,
        )
        return entry

    def _load_version(self, entry: ModelEntry, config: ModelConfig, version: str) -> ServedVersion:
        inputs = tuple(t.spec() for t in config.inputs)
        outputs = tuple(t.spec() for t in config.outputs)
        preprocessor = (
            ImagePreprocessor(
                config.preprocessing,
                self._settings.max_image_pixels,
                self._settings.max_request_pixels,
            )
            if config.preprocessing
            else None
        )
        kind = config.runtime_for(version)
        artifact = entry.path / version / config.artifact_for(version)
        runtime = load_runtime(
            RuntimeSpec(
                kind=kind,
                artifact=artifact,
                inputs=_runtime_inputs(inputs, config, preprocessor),
                outputs=outputs,
                threads=config.onnx.intra_op_threads or self._settings.effective_inference_threads,
                sklearn=config.sklearn,
                python=config.python,
                module_name=module_name_for("model", entry.name, version),
            )
        )
        # An onnx model without a declared signature serves its graph's.
        inputs = inputs or runtime.inputs
        outputs = outputs or runtime.outputs
        classifier = None
        if config.classification:
            scores = next((o for o in outputs if o.name == config.classification.output), None)
            if scores is None:
                runtime.close()
                raise ModelLoadError(
                    f"classification.output '{config.classification.output}' is not an output "
                    f"(the model has {[o.name for o in outputs]})"
                )
            classes = scores.shape[-1] if scores.shape else 0
            classifier = Classifier(config.classification, entry.labels, max(classes, 0))
        stats = ModelStats()
        executor = ThreadPoolExecutor(
            config.batching.instances, thread_name_prefix=f"infer-{entry.name}-{version}"
        )
        return ServedVersion(
            model=entry.name,
            version=version,
            config=config,
            runtime_kind=kind,
            artifact=artifact,
            inputs=inputs,
            outputs=outputs,
            runtime=runtime,
            batcher=self._batcher(
                f"{entry.name}:{version}", config, runtime, executor, stats, kind, outputs
            ),
            executor=executor,
            stats=stats,
            preprocessor=preprocessor,
            classifier=classifier,
            timeout_s=(config.timeout_ms or self._settings.default_timeout_ms) / 1000,
        )

    def _batcher(
        self,
        name: str,
        config: ModelConfig,
        runtime: Runtime,
        executor: ThreadPoolExecutor,
        stats: ModelStats,
        kind: RuntimeKind,
        outputs: tuple[TensorSpec, ...],
    ) -> Batcher:
        """The model's batching settings, with the server's defaults filling the gaps."""
        batching, settings = config.batching, self._settings
        delay_ms = (
            batching.max_batch_delay_ms
            if batching.max_batch_delay_ms is not None
            else settings.default_max_batch_delay_ms
        )
        queue = batching.max_queue_size or settings.default_max_queue_size
        # The default batch size never raises a queue bound the model set lower.
        batch = batching.max_batch_size or min(settings.default_max_batch_size, queue)
        return Batcher(
            name,
            runtime.predict,
            executor,
            output_names=[o.name for o in outputs],
            max_batch_size=batch,
            max_batch_delay_s=delay_ms / 1000,
            max_queue_rows=queue,
            stats=stats,
            instances=batching.instances,
            # Library code never blocks; a user's Python model may (on purpose, or on IO).
            inline=kind is not RuntimeKind.PYTHON,
            low_priority_share=self._sync_share,
            max_queue_wait_s=settings.max_queue_wait_ms / 1000,
        )
